// Command genlua writes lua/certagent/idna_data.lua from agent/names (run by
// `go generate ./agent/names`, in that directory).
package main

import (
	"bytes"
	"log"
	"os"
	"path/filepath"

	"github.com/certagent/certagent/agent/names"
)

func main() {
	var b bytes.Buffer
	if err := names.WriteLuaTable(&b); err != nil {
		log.Fatal(err)
	}
	path := filepath.Join("..", "..", names.LuaTablePath)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
}
