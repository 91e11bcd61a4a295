# /etc/dropship.d/dropship.hcl — releases from Amazon S3 (or any
# S3-compatible store: MinIO, Ceph, R2, … through `endpoint`).
state_path   = "/var/lib/dropship"

repo "s3" {
  region = "us-east-1"
  # endpoint   = "http://minio.internal:9000"  # S3-compatible stores (path-style by default then)
  # profile    = "deploy"                       # a profile of ~/.aws/config
  # access_key = "..."                          # leave out to use the AWS SDK's default chain:
  # secret_key = "..."                          # env, profile (SSO too), web identity, container, instance role
}

service "api" {
  check_interval = "30s"
  keep_releases  = 5

  artifact "s3" {
    bucket      = "releases"
    path        = "api/api.tar.gz"       # publish with: dropship publish api.tar.gz --to s3://releases/api/api.tar.gz
    destination = "/srv/api"             # a symlink to the current release
    owner       = "www-data"
    group       = "www-data"
  }

  before "script" {
    command = "systemctl stop api"
    timeout = "60s"
  }
  after "script" {
    command = "systemctl start api"
  }
  check "http" {
    url      = "http://127.0.0.1:8080/health"
    retries  = 10
    interval = "1s"
  }
}
