package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"aead.dev/minisign"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/dropshipd/dropship/artifact/signature"
)

// passwordEnv holds a secret key's passphrase for unattended use.
const passwordEnv = "DROPSHIP_KEY_PASSWORD"

func keygenCmd(g *globals) *cobra.Command {
	var out string
	var noPassword, force bool
	cmd := &cobra.Command{
		Use:   "keygen [--out PREFIX] [--no-password]",
		Short: "Write a key pair for signing releases (minisign format)",
		Long: "Write PREFIX.key (the secret key, mode 0600, encrypted with a passphrase) and PREFIX.pub\n" +
			"(the public key to list in trusted_keys). The passphrase is read from $" + passwordEnv + "\n" +
			"or asked on the terminal; --no-password writes the secret key unencrypted, for CI\n" +
			"systems that keep it in their own secret store. The files are those of the minisign CLI.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			keyPath, pubPath := out+".key", out+".pub"
			if !force {
				for _, p := range []string{keyPath, pubPath} {
					if _, err := os.Stat(p); err == nil {
						return fmt.Errorf("%s exists: pass --force to overwrite a key (its signatures then no longer verify)", p)
					}
				}
			}
			pub, priv, err := minisign.GenerateKey(nil)
			if err != nil {
				return err
			}
			var secret []byte
			if noPassword {
				secret, err = priv.MarshalText()
			} else {
				var pw string
				pw, err = passphrase(g, true)
				if err == nil {
					secret, err = minisign.EncryptKey(pw, priv)
				}
			}
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(keyPath), 0o700); err != nil {
				return err
			}
			if err := writeFileMode(keyPath, secret, 0o600); err != nil {
				return err
			}
			pubText, _ := pub.MarshalText()
			if err := writeFileMode(pubPath, pubText, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "secret key: %s (keep it secret)\npublic key: %s\n  trusted_keys = [%q]\n", keyPath, pubPath, pub.String())
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "out", "o", "dropship", "path prefix of the key files")
	cmd.Flags().BoolVar(&noPassword, "no-password", false, "write the secret key unencrypted (CI)")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite existing key files")
	return cmd
}

func writeFileMode(path string, b []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil { // whatever the umask
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// passphrase reads a secret key's passphrase: from the environment, else
// from the terminal (twice for a new key). Never from a pipe by surprise.
func passphrase(g *globals, confirm bool) (string, error) {
	if pw, ok := os.LookupEnv(passwordEnv); ok {
		return pw, nil
	}
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return "", fmt.Errorf("no passphrase: set $%s, or use a key made with --no-password", passwordEnv)
	}
	fmt.Fprint(g.stderr, "passphrase: ")
	pw, err := term.ReadPassword(fd)
	fmt.Fprintln(g.stderr)
	if err != nil {
		return "", err
	}
	if confirm {
		fmt.Fprint(g.stderr, "again: ")
		again, err := term.ReadPassword(fd)
		fmt.Fprintln(g.stderr)
		if err != nil {
			return "", err
		}
		if !bytes.Equal(pw, again) {
			return "", errors.New("the passphrases differ")
		}
	}
	return string(pw), nil
}

// loadSecretKey reads a secret key file, decrypting it when it is
// encrypted.
func loadSecretKey(g *globals, path string) (minisign.PrivateKey, error) {
	// The mode is that of the file read, taken on the same descriptor: a
	// path replaced meanwhile never lends another file's mode to the key.
	f, err := os.Open(path)
	if err != nil {
		return minisign.PrivateKey{}, fmt.Errorf("signing key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return minisign.PrivateKey{}, fmt.Errorf("signing key: %w", err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return minisign.PrivateKey{}, fmt.Errorf("signing key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		// Anyone who can read a key without a passphrase can sign releases
		// the fleet installs; an encrypted one still needs its passphrase.
		if !minisign.IsEncrypted(b) {
			return minisign.PrivateKey{}, fmt.Errorf("signing key %s has no passphrase and others may read it (mode %04o): chmod 600 it, or make an encrypted key with dropship keygen", path, fi.Mode().Perm())
		}
		fmt.Fprintf(g.stderr, "warning: signing key %s may be read by others (mode %04o): chmod 600 it\n", path, fi.Mode().Perm())
	}
	if !minisign.IsEncrypted(b) {
		var k minisign.PrivateKey
		if err := k.UnmarshalText(b); err != nil {
			return k, fmt.Errorf("signing key %s: %w", path, err)
		}
		return k, nil
	}
	pw, err := passphrase(g, false)
	if err != nil {
		return minisign.PrivateKey{}, err
	}
	k, err := minisign.DecryptKey(pw, b)
	if err != nil {
		return k, fmt.Errorf("signing key %s: %w (wrong passphrase?)", path, err)
	}
	return k, nil
}

// signFile signs the bytes of path (pre-hashed, as minisign -H) with a
// trusted comment naming the service, version, digest, time and publisher.
func signFile(key minisign.PrivateKey, path string, c signature.Claims) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	r := minisign.NewReader(io.TeeReader(f, h))
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", path, err)
	}
	// The size and digest in the trusted comment let an agent check the
	// object before reading its body.
	c.SHA256, c.Size = hex.EncodeToString(h.Sum(nil)), n
	if c.Time.IsZero() {
		c.Time = time.Now().UTC()
	}
	if c.Publisher == "" {
		c.Publisher = who()
	}
	return r.SignWithComments(key, c.Comment(), "signature from dropship secret key"), nil
}

func verifyCmd(g *globals) *cobra.Command {
	var sigPath, service string
	var keys []string
	cmd := &cobra.Command{
		Use:   "verify FILE [--sig FILE] [--service NAME] [--key KEY]...",
		Short: "Check a local artifact's signature against the configured keys",
		Long: "Check FILE against its signature (FILE.minisig, or --sig) the way the agent would:\n" +
			"the trusted_keys and revoked_keys of SERVICE in --config (or the keys given with --key),\n" +
			"and the service the signature names. Exits 0 only for a release the agent would accept.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ring, name, err := g.keyring(service, keys)
			if err != nil {
				return err
			}
			if sigPath == "" {
				sigPath = args[0] + signature.Suffix
			}
			sig, err := os.ReadFile(sigPath)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			h := sha256.New()
			r := minisign.NewReader(io.TeeReader(f, h))
			n, err := io.Copy(io.Discard, r)
			if err != nil {
				return err
			}
			c, err := ring.Verify(sig, r, signature.Expect{Service: name, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n, Now: time.Now()})
			if err != nil {
				fmt.Fprintf(g.stderr, "%s: %v\n", args[0], err)
				return exitError{1}
			}
			fmt.Fprintf(g.stdout, "%s: ok, signed by key %016X", args[0], c.KeyID)
			for _, kv := range [][2]string{{"service", c.Service}, {"version", c.Version}, {"publisher", c.Publisher}} {
				if kv[1] != "" {
					fmt.Fprintf(g.stdout, ", %s %s", kv[0], kv[1])
				}
			}
			if !c.Time.IsZero() {
				fmt.Fprintf(g.stdout, ", at %s", c.Time.Format(time.RFC3339))
			}
			fmt.Fprintln(g.stdout)
			return nil
		},
	}
	cmd.Flags().StringVar(&sigPath, "sig", "", "signature file (default FILE.minisig)")
	cmd.Flags().StringVar(&service, "service", "", "service whose keys to use (default: the only one with trusted_keys)")
	cmd.Flags().StringArrayVar(&keys, "key", nil, "trusted public key (RW… or a .pub file) instead of the config's")
	return cmd
}

// keyring finds the keys to verify with: --key, else the service's.
func (g *globals) keyring(service string, keys []string) (*signature.Keyring, string, error) {
	if len(keys) > 0 {
		var pks []minisign.PublicKey
		for _, k := range keys {
			pk, err := signature.ParseKey(k, ".")
			if err != nil {
				return nil, "", fmt.Errorf("--key: %w", err)
			}
			pks = append(pks, pk)
		}
		return signature.NewKeyring(pks, nil), service, nil
	}
	cfg, err := g.load(nil)
	if err != nil {
		return nil, "", err
	}
	var names []string
	for _, s := range cfg.Services {
		if s.Keys.Len() == 0 {
			continue
		}
		if s.Name == service {
			return s.Keys, s.Name, nil
		}
		names = append(names, s.Name)
	}
	switch {
	case service != "":
		return nil, "", fmt.Errorf("service %q has no trusted_keys in %s", service, cfg.File)
	case len(names) == 1:
		for _, s := range cfg.Services {
			if s.Name == names[0] {
				return s.Keys, s.Name, nil
			}
		}
	case len(names) == 0:
		return nil, "", fmt.Errorf("no service in %s has trusted_keys (or pass --key)", cfg.File)
	}
	return nil, "", fmt.Errorf("several services have trusted_keys (%s): pass --service", strings.Join(names, ", "))
}

func signCmd(g *globals) *cobra.Command {
	var keyPath, sigPath string
	var c signature.Claims
	cmd := &cobra.Command{
		Use:   "sign FILE --key SECRET_KEY [--service NAME] [--version V]",
		Short: "Write FILE.minisig, a signature agents with trusted_keys accept",
		Long: "Sign FILE with a secret key from `dropship keygen` (or the minisign CLI). The trusted\n" +
			"comment names the service, the version, the size and SHA-256 of FILE, the time and the\n" +
			"publisher, and the agent checks each (the size before it reads the artifact). `dropship\n" +
			"publish --sign` does this and uploads both; use this\n" +
			"command with other upload tools, and upload the signature before the artifact.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := loadSecretKey(g, keyPath)
			if err != nil {
				return err
			}
			sig, err := signFile(key, args[0], c)
			if err != nil {
				return err
			}
			if sigPath == "" {
				sigPath = args[0] + signature.Suffix
			}
			if err := os.WriteFile(sigPath, sig, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "signed %s: %s\n", args[0], sigPath)
			return nil
		},
	}
	cmd.Flags().StringVar(&keyPath, "key", "", "secret key file")
	cmd.Flags().StringVar(&sigPath, "sig", "", "where to write the signature (default FILE.minisig)")
	cmd.Flags().StringVar(&c.Service, "service", "", "the service the release is for (agents of other services refuse it)")
	cmd.Flags().StringVar(&c.Version, "version", "", "version or build id, recorded by the agent")
	cmd.MarkFlagRequired("key")
	cmd.MarkFlagRequired("service")
	return cmd
}
