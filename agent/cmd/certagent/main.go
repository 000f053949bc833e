// Command certagent obtains and renews certificates for the names nginx sees,
// and inspects what is stored. See README.md.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// version and commit may be set at build time (scripts/build-bin):
// -ldflags "-X main.version=v1.2.3 -X main.commit=<git rev-parse HEAD>".
// Without them --version says what the go command recorded (versionString).
var version, commit string

func main() {
	app := &cli.App{
		Name:    "certagent",
		Usage:   "certificates on demand for nginx fleets, through Redis",
		Version: versionString(version, commit, readBuildInfo()),
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
			peersCommand(),
		},
	}
	// A flag that does not parse is bad usage: exit 2 like every other, for
	// the global flags, the commands and their subcommands (account, allow).
	app.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
		return usageErrorf("certagent: %v", err)
	}
	setUsageErrors(app.Commands, "certagent")
	setCategories(app.Commands)
	// So is an unknown command or subcommand (urfave/cli would exit 3).
	app.CommandNotFound = func(_ *cli.Context, command string) {
		cli.HandleExitCoder(usageErrorf("certagent: no command %q (see certagent --help)", command))
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "certagent:", err)
		os.Exit(1)
	}
}

// setUsageErrors makes a flag parse error of every command in cmds, and of
// their subcommands, exit 2 with the command's full name.
func setUsageErrors(cmds []*cli.Command, parent string) {
	for _, cmd := range cmds {
		name := parent + " " + cmd.Name
		cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
			return usageErrorf("%s: %v", name, err)
		}
		setUsageErrors(cmd.Subcommands, name)
	}
}
