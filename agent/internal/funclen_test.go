package internal_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// maxLines is the longest a function of the agent may be (from func to
// its closing brace) without saying why: a doc comment with "Long because".
const maxLines = 80

// TestLongFunctionsSayWhy lists the non-test functions over maxLines lines
// whose doc comment does not say why they are long.
func TestLongFunctionsSayWhy(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	err = filepath.WalkDir(filepath.Join(root, "agent"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			checked++
			lines := fset.Position(fn.End()).Line - fset.Position(fn.Pos()).Line + 1
			if lines > maxLines && !strings.Contains(fn.Doc.Text(), "Long because") {
				rel, _ := filepath.Rel(root, path)
				t.Errorf("%s:%d: %s has %d lines: split it, or say in its doc comment why it is long (\"Long because ...\")",
					filepath.ToSlash(rel), fset.Position(fn.Pos()).Line, fn.Name.Name, lines)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 100 {
		t.Fatalf("checked %d functions: wrong root %s", checked, root)
	}
}
