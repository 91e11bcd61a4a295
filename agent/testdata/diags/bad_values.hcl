service "bad name!" {
  concurrency   = 0
  keep_releases = 1
  artifact "file" {
    path         = "x.tar.gz"
    destination  = "/srv/api"
    content_type = "text/html"
    file_mode    = "rw-r--r--"
  }
}
