package s3

import "time"

// NewClientEnv is NewClient with env in place of the process environment.
func NewClientEnv(r Repo, env func(string) string) (*Client, error) {
	return newClient(r, credEnv(env))
}

// Sign is the SigV4 signer.
var Sign = sign

// Now sets the client's clock (signing time).
func (c *Client) SetNow(now func() time.Time) { c.now = now }
