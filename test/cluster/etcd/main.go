// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3 by test/cluster/build.sh.
// Debian's etcd is older than Kubernetes supports, so the cluster test tier builds its own.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
