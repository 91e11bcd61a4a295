service "hello" {
  check_interval = "2s"
  keep_releases  = 3

  # publish.sh writes a new release here.
  artifact "file" {
    path        = "../run/store/hello.tar.gz"
    destination = "../run/srv/hello"   # a symlink to the current release
  }

  # Runs in the current release's directory before the switch.
  before "script" {
    command = "echo \"stopping hello $DROPSHIP_PREVIOUS_CHECKSUM\""
  }

  # Runs in the new release's directory after the switch; a failure here
  # rolls back to the previous release.
  after "script" {
    command = "./bin/hello"
    timeout = "30s"
  }
}
