// Command k8sbundle is one binary for etcd and the Kubernetes control plane.
//
// Linking the API server, controller manager, scheduler and kubectl into a
// single program compiles their (largely shared) dependencies once and links
// once, which on a two-core machine is several times faster than four builds.
// It dispatches on its first argument, or on the name it was invoked by, so a
// symlink named kubectl behaves as kubectl.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var commands = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubectl":                 kubectlcmd.NewDefaultKubectlCommand,
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args
	if name == "k8sbundle" {
		if len(os.Args) < 2 {
			fmt.Fprintln(os.Stderr, "usage: k8sbundle etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubectl [args...]")
			os.Exit(2)
		}
		name = os.Args[1]
		args = os.Args[1:]
	}
	if name == "etcd" {
		etcdmain.Main(args)
		return
	}
	build, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "k8sbundle: unknown command %q\n", name)
		os.Exit(2)
	}
	command := build()
	command.SetArgs(args[1:])
	if name == "kubectl" {
		// kubectl formats its own errors (and their exit codes) through CheckErr,
		// as the upstream kubectl main does; RunNoErrOutput avoids printing twice.
		if err := cli.RunNoErrOutput(command); err != nil {
			cmdutil.CheckErr(err)
		}
		return
	}
	os.Exit(cli.Run(command))
}
