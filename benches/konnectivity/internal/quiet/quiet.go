/*
Copyright 2019 The Kubernetes Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

// Package quiet runs a Konnectivity command the way sigs.k8s.io/apiserver-network-proxy
// v0.34.0 does in cmd/*/main.go (copied from there for connector's benchmarks,
// benches/compare.sh), except that the default log verbosity is 0 instead of 4, so that
// logging does not dominate the measurements.
package quiet

import (
	"flag"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"sigs.k8s.io/apiserver-network-proxy/pkg/util"
)

// Main adds the command's options and klog's flags (-v defaulting to 0) to
// command, runs it, and exits with status 1 if it fails.
func Main(command *cobra.Command, options *pflag.FlagSet) {
	flags := command.Flags()
	flags.AddFlagSet(options)
	local := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	klog.InitFlags(local)
	err := local.Set("v", "0")
	if err != nil {
		fmt.Fprintf(os.Stderr, "error setting klog flags: %v", err)
	}
	local.VisitAll(func(fl *flag.Flag) {
		fl.Name = util.Normalize(fl.Name)
		flags.AddGoFlag(fl)
	})
	if err := command.Execute(); err != nil {
		klog.Errorf("error: %v\n", err)
		klog.Flush()
		os.Exit(1)
	}
}
