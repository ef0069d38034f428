// Command etcd is upstream etcd's server command, built from the module
// proxy at the version in ../../versions.env.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
