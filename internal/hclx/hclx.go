// Package hclx holds the small HCL helpers every plugin decoder shares:
// ranges of attributes for diagnostics, durations, legacy key warnings and
// paths relative to the config file.
package hclx

import (
	"fmt"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// AttrRange returns the range of attribute name in body, or the body's
// own range when it is not set.
func AttrRange(body hcl.Body, name string) *hcl.Range {
	content, _, _ := body.PartialContent(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: name}}})
	if content != nil {
		if a, ok := content.Attributes[name]; ok {
			r := a.Expr.Range()
			return &r
		}
	}
	r := body.MissingItemRange()
	return &r
}

// Errorf is a diagnostic about attribute name of body.
func Errorf(body hcl.Body, name, summary, format string, args ...any) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   fmt.Sprintf(format, args...),
		Subject:  AttrRange(body, name),
	}
}

// Duration parses a Go duration ("90s", "5m") held in attribute name. An
// empty value yields def.
func Duration(body hcl.Body, name, value string, def time.Duration) (time.Duration, hcl.Diagnostics) {
	if value == "" {
		return def, nil
	}
	d, err := time.ParseDuration(value)
	if err != nil || d < 0 {
		return def, hcl.Diagnostics{Errorf(body, name, "Invalid duration",
			"%s = %q is not a duration: write it like \"30s\", \"5m\" or \"1h30m\".", name, value)}
	}
	return d, nil
}

// Legacy warns about each old key of renames (old name -> new name) that
// body sets. The caller decodes both names; the new one wins.
func Legacy(body hcl.Body, renames map[string]string) hcl.Diagnostics {
	schema := &hcl.BodySchema{}
	for old := range renames {
		schema.Attributes = append(schema.Attributes, hcl.AttributeSchema{Name: old})
	}
	content, _, _ := body.PartialContent(schema)
	if content == nil {
		return nil
	}
	var diags hcl.Diagnostics
	olds := make([]string, 0, len(content.Attributes))
	for old := range content.Attributes {
		olds = append(olds, old)
	}
	// In the order they are written.
	sort.Slice(olds, func(i, j int) bool {
		return content.Attributes[olds[i]].NameRange.Start.Byte < content.Attributes[olds[j]].NameRange.Start.Byte
	})
	for _, old := range olds {
		a := content.Attributes[old]
		r := a.NameRange
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagWarning,
			Summary:  "Deprecated key",
			Detail:   fmt.Sprintf("%q is the old name of %q; it still works, but write %q.", old, renames[old], renames[old]),
			Subject:  &r,
		})
	}
	return diags
}

// Path resolves p against base, the directory of the config file.
func Path(base, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(base, p)
}

// Required reports an attribute that must be set and is empty.
func Required(body hcl.Body, name, value string) hcl.Diagnostics {
	if strings.TrimSpace(value) != "" {
		return nil
	}
	r := body.MissingItemRange()
	return hcl.Diagnostics{{
		Severity: hcl.DiagError,
		Summary:  "Missing required argument",
		Detail:   fmt.Sprintf("The argument %q is required and must not be empty.", name),
		Subject:  &r,
	}}
}

// Template parses a text/template held in attribute name.
func Template(body hcl.Body, name, value string) (*template.Template, hcl.Diagnostics) {
	t, err := template.New(name).Option("missingkey=error").Parse(value)
	if err != nil {
		return nil, hcl.Diagnostics{Errorf(body, name, "Invalid template", "%s: %v", name, err)}
	}
	return t, nil
}

// URL parses an absolute http(s) URL held in attribute name.
func URL(body hcl.Body, name, value string) (*url.URL, hcl.Diagnostics) {
	u, err := url.Parse(value)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, hcl.Diagnostics{Errorf(body, name, "Invalid URL",
			"%s = %q is not an http:// or https:// URL with a host.", name, value)}
	}
	return u, nil
}

// Str is the value of an optional string attribute, "" when unset.
func Str(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// First returns the first non-nil of a new key and its legacy twins.
func First[T any](vals ...*T) *T {
	for _, v := range vals {
		if v != nil {
			return v
		}
	}
	return nil
}
