// The etcd server of the Kubernetes e2e (e2e/k8s/build.sh), built from
// go.etcd.io/etcd/server/v3 as etcd's own main.go does: the module proxy serves
// the server module, not a release tarball.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
