service "api" {
  check_interval = "5s"
}
