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
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "certagent:", err)
		os.Exit(1)
	}
}
