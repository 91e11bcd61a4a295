# vim: set ft=hcl :
# Location that service config will be read from
service_path = "/etc/dropship.d/services"

# Rackspace Repo Config
# =====================
repo "rackspace" {
  user = "<your-rackspace-user>"
  key = "<your-rackspace-key>"
  region = "<rackspace-region>"
}

repo "s3" {
  accessKey = "<your-s3-key>"
  secret = "<your-s3-secret>"
  name = "us-west-1"
  endpoint = "https://s3-us-west-1.amazonaws.com"
}
