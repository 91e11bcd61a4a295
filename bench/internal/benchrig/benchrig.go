// Package benchrig starts the real servers the benches run against: MinIO
// from the rig with a bucket made in it, and Consul. Only the benches use
// it; the tests' servers come from internal/rig directly (which must not
// import the S3 store it serves).
package benchrig

import (
	"context"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/dropshipd/dropship/artifact/s3"
	"github.com/dropshipd/dropship/internal/rig"
)

// Servers are the servers of one bench run.
type Servers struct {
	MinIO  *rig.MinIO
	Store  *s3.Store   // on MinIO, its bucket made
	Consul *rig.Consul // nil from StartMinIO
}

// Start starts MinIO, with bucket made in it, and Consul.
func Start(ctx context.Context, bucket string) (*Servers, error) {
	s, err := StartMinIO(ctx, bucket)
	if err != nil {
		return nil, err
	}
	if s.Consul, err = rig.StartConsul(); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// StartMinIO starts MinIO alone, with bucket made in it.
func StartMinIO(ctx context.Context, bucket string) (*Servers, error) {
	m, err := rig.StartMinIO()
	if err != nil {
		return nil, err
	}
	s := &Servers{MinIO: m}
	s.Store, err = s3.NewStore(ctx, s3.Config{Endpoint: aws.String(m.Endpoint), AccessKey: aws.String(m.AccessKey),
		SecretKey: aws.String(m.SecretKey), Region: aws.String("us-east-1")})
	if err == nil {
		err = createBucket(ctx, s.Store, bucket)
	}
	if err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// createBucket makes bucket, retrying for a minute: on a loaded machine
// MinIO may still answer "not initialized" for a while after it is live.
func createBucket(ctx context.Context, st *s3.Store, bucket string) error {
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		err := st.CreateBucket(ctx, bucket)
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}

// Stop stops the servers and removes their data.
func (s *Servers) Stop() {
	if s.Consul != nil {
		s.Consul.Stop()
	}
	s.MinIO.Stop()
}
