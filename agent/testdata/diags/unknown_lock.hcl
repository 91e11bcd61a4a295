lock "zookeeper" {
  address = "zk:2181"
}
