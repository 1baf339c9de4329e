package pgreplica

import (
	"bufio"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/version"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"testing"
)

// The Go in README.md and docs/**/*.md compiles against this checkout: a
// user who copies it gets a program that builds. go vet type-checks every
// snippet in a module of its own whose requirements are those of
// integration/frameworks (the ORMs the docs show, and through its replace
// directive pgreplica and its own dependencies).
//
// The convention:
//   - a ```go block that starts with "package" is a file of its own
//     package, compiled whole;
//   - any other ```go block is the body of a function, with the packages it
//     names imported and ctx, db, dsn, cfg and connector declared;
//   - an inline `code span` that is one Go statement calling into
//     pgreplica (`sql.OpenDB(pgreplica.NewConnector(*cfg))`) is compiled the
//     same way, when every name it uses is one of those.
//
// It needs the go command and the module cache of a built checkout (no
// network: GOPROXY=off); -short skips it.
func TestDocsGoSnippetsCompile(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: compiling the docs' snippets takes a while")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	root, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	docs := []string{"README.md"}
	_ = filepath.WalkDir("docs", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".md") {
			docs = append(docs, path)
		}
		return nil
	})
	sort.Strings(docs[1:])

	mod := t.TempDir()
	fwMod, err := os.ReadFile(filepath.Join(root, "integration", "frameworks", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	// The frameworks' modules need a newer Go than pgreplica does: under
	// the minimum toolchain (.ci/run's GOTOOLCHAIN section) they cannot be
	// built, and the main run checks the snippets.
	if m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(fwMod); m != nil && version.Compare(runtime.Version(), "go"+string(m[1])) < 0 {
		t.Skipf("integration/frameworks needs go %s; this is %s", m[1], runtime.Version())
	}
	gomod := regexp.MustCompile(`(?m)^module .*$`).ReplaceAllString(string(fwMod), "module docsnippets")
	gomod = regexp.MustCompile(`(?m)^replace github.com/pgreplica/pgreplica => .*$`).ReplaceAllString(gomod,
		"replace github.com/pgreplica/pgreplica => "+root)
	writeFile(t, filepath.Join(mod, "go.mod"), gomod)
	var sum []byte
	for _, f := range []string{filepath.Join(root, "integration", "frameworks", "go.sum"), filepath.Join(root, "go.sum")} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sum = append(sum, b...)
	}
	writeFile(t, filepath.Join(mod, "go.sum"), string(sum))

	var snippets []docSnippet
	for _, f := range docs {
		s, err := extractGoSnippets(f)
		if err != nil {
			t.Fatal(err)
		}
		snippets = append(snippets, s...)
	}
	if len(snippets) == 0 {
		t.Fatal("no Go snippets found in README.md and docs/")
	}
	where := map[string]string{}
	for i, s := range snippets {
		dir := fmt.Sprintf("s%03d", i)
		where[dir] = fmt.Sprintf("%s:%d", s.file, s.line)
		src := s.code
		if !s.whole {
			src = wrapSnippet(s.code)
		}
		writeFile(t, filepath.Join(mod, dir, "snippet.go"), src)
	}

	cmd := exec.Command(gobin, "vet", "./...")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off", "GOTOOLCHAIN=local")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Logf("%d snippets compile", len(snippets))
		return
	}
	// Name each failing snippet by its file and line.
	msg := regexp.MustCompile(`\bs\d{3}\b`).ReplaceAllStringFunc(string(out), func(dir string) string {
		if w, ok := where[dir]; ok {
			return dir + " (" + w + ")"
		}
		return dir
	})
	t.Fatalf("Go snippets of the docs do not compile:\n%s", msg)
}

type docSnippet struct {
	file  string
	line  int
	code  string
	whole bool // a file of its own, starting with "package"
}

var inlineSpan = regexp.MustCompile("`([^`]+)`")

// extractGoSnippets returns the ```go blocks of a Markdown file and its
// inline spans that are a checkable Go statement (see snippetStatement).
func extractGoSnippets(path string) ([]docSnippet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		out     []docSnippet
		in      bool // inside a fenced block
		isGo    bool
		start   int
		code    strings.Builder
		lineNum int
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lineNum++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "```") {
			if !in {
				in, isGo, start = true, strings.TrimSpace(strings.TrimPrefix(trimmed, "```")) == "go", lineNum
				code.Reset()
				continue
			}
			if isGo {
				src := code.String()
				out = append(out, docSnippet{file: path, line: start, code: src,
					whole: strings.HasPrefix(strings.TrimSpace(stripComments(src)), "package ")})
			}
			in = false
			continue
		}
		if in {
			code.WriteString(line)
			code.WriteByte('\n')
			continue
		}
		for _, m := range inlineSpan.FindAllStringSubmatch(line, -1) {
			if stmt, ok := snippetStatement(m[1]); ok {
				out = append(out, docSnippet{file: path, line: lineNum, code: stmt})
			}
		}
	}
	return out, sc.Err()
}

// stripComments drops leading // lines, which may precede "package".
func stripComments(src string) string {
	var keep []string
	for _, l := range strings.Split(src, "\n") {
		if t := strings.TrimSpace(l); t == "" || strings.HasPrefix(t, "//") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// snippetVars are the names a fragment may use without declaring them.
var snippetVars = `var (
	ctx       context.Context
	db        *sql.DB
	dsn       string
	cfg       *pgreplica.Config
	connector *pgreplica.Connector
)
`

// snippetImports are the packages a fragment may name, by the name it uses.
var snippetImports = map[string]string{
	"context":       "context",
	"sql":           "database/sql",
	"errors":        "errors",
	"fmt":           "fmt",
	"http":          "net/http",
	"log":           "log",
	"os":            "os",
	"slog":          "log/slog",
	"time":          "time",
	"pgreplica":     "github.com/pgreplica/pgreplica",
	"pgx":           "github.com/jackc/pgx/v5",
	"pgxpool":       "github.com/jackc/pgx/v5/pgxpool",
	"pgconn":        "github.com/jackc/pgx/v5/pgconn",
	"prometheus":    "github.com/prometheus/client_golang/prometheus",
	"pgreplicaprom": "github.com/pgreplica/pgreplica/pgreplicaprom",
}

// snippetStatement says whether an inline code span is one Go statement
// that calls into pgreplica and uses only the names a fragment may use; it
// returns the statement.
func snippetStatement(span string) (string, bool) {
	if !strings.Contains(span, "pgreplica.") {
		return "", false
	}
	file, err := parser.ParseFile(token.NewFileSet(), "", "package p; func _() {\n"+span+"\n}", 0)
	if err != nil {
		return "", false
	}
	body := file.Decls[0].(*ast.FuncDecl).Body.List
	if len(body) != 1 {
		return "", false
	}
	switch s := body[0].(type) {
	case *ast.ExprStmt:
		if _, ok := s.X.(*ast.CallExpr); !ok {
			return "", false
		}
	case *ast.AssignStmt:
	default:
		return "", false
	}
	known := true
	declared := map[string]bool{}
	if a, ok := body[0].(*ast.AssignStmt); ok && a.Tok == token.DEFINE {
		for _, l := range a.Lhs {
			if id, ok := l.(*ast.Ident); ok {
				declared[id.Name] = true
			}
		}
	}
	isVar := func(name string) bool { return strings.Contains(snippetVars, "\t"+name+" ") }
	var visit func(n ast.Node) bool
	visit = func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.SelectorExpr:
			if id, ok := x.X.(*ast.Ident); ok {
				if _, isPkg := snippetImports[id.Name]; !isPkg && !isVar(id.Name) && !declared[id.Name] {
					known = false
				}
			} else {
				ast.Inspect(x.X, visit)
			}
			return false // x.Sel is a field or method name
		case *ast.Ident:
			if !declared[x.Name] && x.Name != "_" && x.Name != "nil" && !isVar(x.Name) {
				known = false
			}
		}
		return true
	}
	ast.Inspect(body[0], visit)
	return span, known
}

// wrapSnippet makes a fragment a file: its statements in a function, the
// packages it names imported, every name it declares used.
func wrapSnippet(code string) string {
	var b strings.Builder
	b.WriteString("package main\n\nimport (\n")
	used := map[string]bool{"context": true, "sql": true, "pgreplica": true} // snippetVars
	for name := range snippetImports {
		if regexp.MustCompile(`\b` + name + `\.`).MatchString(code) {
			used[name] = true
		}
	}
	var names []string
	for name := range used {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(&b, "\t%s %q\n", name, snippetImports[name])
	}
	b.WriteString(")\n\n" + snippetVars + "\nfunc main() {\n" + strings.TrimSuffix(code, "\n") + "\n")
	// Declared and never used is an error in Go, not in prose.
	if file, err := parser.ParseFile(token.NewFileSet(), "", "package p; func _() {\n"+code+"\n}", 0); err == nil {
		for _, st := range file.Decls[0].(*ast.FuncDecl).Body.List {
			if a, ok := st.(*ast.AssignStmt); ok && a.Tok == token.DEFINE {
				for _, l := range a.Lhs {
					if id, ok := l.(*ast.Ident); ok && id.Name != "_" {
						fmt.Fprintf(&b, "\t_ = %s\n", id.Name)
					}
				}
			}
		}
	}
	b.WriteString("}\n")
	return b.String()
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
