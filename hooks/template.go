package hooks

import (
	"bytes"
	"fmt"
	"text/template"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/internal/hclx"
)

// Template is a text/template over Event, checked when the config loads.
type Template struct{ t *template.Template }

// ParseTemplate parses attribute name of body and renders it once against
// an empty Event, so an unknown field ({{.Nmae}}) is a diagnostic at load
// time, not a surprise at deploy time.
func ParseTemplate(body hcl.Body, name, value string) (*Template, hcl.Diagnostics) {
	t, diags := hclx.Template(body, name, value)
	if diags.HasErrors() {
		return nil, diags
	}
	if err := t.Execute(&bytes.Buffer{}, Event{}); err != nil {
		return nil, hcl.Diagnostics{hclx.Errorf(body, name, "Invalid template",
			"%s: %v (fields: .Name .Hostname .Hash .PreviousHash .Release .ReleaseDir .Phase .Result .Error .Duration .Time)", name, err)}
	}
	return &Template{t}, nil
}

// Render renders the template for ev.
func (t *Template) Render(ev Event) (string, error) {
	if t == nil {
		return "", nil
	}
	var b bytes.Buffer
	if err := t.t.Execute(&b, ev); err != nil {
		return "", fmt.Errorf("render %s: %w", t.t.Name(), err)
	}
	return b.String(), nil
}
