# /etc/dropship.d/dropship.hcl — releases from Rackspace Cloud Files.
state_path   = "/var/lib/dropship"

repo "rackspace" {
  user   = "deployer"
  key    = "0123456789abcdef0123456789abcdef"   # the account's API key
  region = "DFW"
  # auth_url = "https://identity.api.rackspacecloud.com/v2.0"  # the default for rackspace
}

# Any other OpenStack Swift: Keystone v3 with a project and a domain.
repo "openstack" {
  type         = "swift"
  user         = "deployer"
  key          = "secret"
  auth_url     = "https://keystone.example.com/v3"
  auth_version = 3
  tenant       = "releases"
  domain       = "Default"
  region       = "RegionOne"
}

service "web" {
  check_interval = "30s"

  artifact "rackspace" {
    container   = "releases"             # `bucket` works too, as in older configs
    path        = "web/web.tar.gz"       # publish with: dropship publish web.tar.gz --to swift://releases/web/web.tar.gz
    destination = "/srv/web"
  }

  after "script" { command = "systemctl restart web" }
}

service "worker" {
  artifact "swift" {
    repo        = "openstack"
    container   = "releases"
    path        = "worker/worker.tar.zst"
    destination = "/srv/worker"
  }
  after "script" { command = "systemctl restart worker" }
}
