package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/names"
	"github.com/certagent/certagent/agent/store"
)

func showCommand() *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "show the certificate stored for a name (never its private key)",
		ArgsUsage: "NAME",
		Flags:     withFlags(redisFlags(), []cli.Flag{&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"}}),
		Action:    showAction,
	}
}

func showAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("certagent show: name exactly one NAME", 2)
	}
	name, err := names.Normalize(c.Args().First())
	if err != nil {
		return cli.Exit(fmt.Sprintf("certagent show: %v", err), 2)
	}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	rec, err := st.GetCert(c.Context, name)
	if errors.Is(err, store.ErrNotFound) {
		return cli.Exit(fmt.Sprintf("certagent show: no certificate stored for %s", name), 1)
	}
	if err != nil {
		return err
	}
	v := viewOf(name, rec)
	if c.Bool(flagJSON) {
		return writeJSON(c.App.Writer, v)
	}
	return writeDetails(c.App.Writer, v, time.Now())
}
