// The test node's pod sandbox process (what registry.k8s.io/pause does): hold the pod's
// namespaces open, reap adopted children, and exit 0 on SIGINT or SIGTERM. Standard
// library only, built static by tests/cluster/images.py: there is no registry to pull from.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
