service "api" {
  artifact "file" {
    path = "x.tar.gz"
  }
}
