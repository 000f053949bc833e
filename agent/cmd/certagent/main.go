// Command certagent obtains and renews certificates for the names nginx sees,
// and inspects what is stored. See README.md.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	app := &cli.App{
		Name:    "certagent",
		Usage:   "certificates on demand for nginx fleets, through Redis",
		Version: version,
		Commands: []*cli.Command{
			runCommand(),
			issueCommand(),
			renewCommand(),
			revokeCommand(),
			deleteCommand(),
			importCommand(),
			exportCommand(),
			listCommand(),
			showCommand(),
			statusCommand(),
			accountCommand(),
			allowCommand(),
		},
	}
	for _, cmd := range app.Commands {
		name := cmd.Name
		// A flag that does not parse is bad usage: exit 2 like every other.
		cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
			return cli.Exit(fmt.Sprintf("certagent %s: %v", name, err), exitUsage)
		}
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "certagent:", err)
		os.Exit(1)
	}
}
