package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// The nginx the tests run is chosen by environment variables, so the same
// tests run on Debian's nginx and on an OpenResty-equivalent build
// (scripts/openresty-stack, which scripts/test runs them on as well).
const (
	// EnvNginx names the nginx binary; unset: Debian's /usr/sbin/nginx.
	EnvNginx = "CERTAGENT_TEST_NGINX"
	// EnvLuaLib names the directory holding resty.core, resty.lrucache and
	// the Redis client (resty.redis or nginx.redis); unset: PREFIX/lualib
	// for a binary in PREFIX/sbin that has one (OpenResty's layout), else
	// Debian's /usr/share/lua/5.1.
	EnvLuaLib = "CERTAGENT_TEST_LUALIB"
	// EnvNginxNoYield names an nginx built without OpenResty's
	// ssl_cert_cb_yield core change (scripts/openresty-stack --no-yield),
	// for the test of certagent's check that ssl_certificate_by_lua can
	// yield.
	EnvNginxNoYield = "CERTAGENT_TEST_NGINX_NOYIELD"
)

const (
	debianNginx  = "/usr/sbin/nginx"
	debianLuaLib = "/usr/share/lua/5.1"
)

// NginxModulesDir is where Debian installs the dynamic modules nginx loads.
const NginxModulesDir = "/usr/lib/nginx/modules"

// NginxStack is an nginx binary and the Lua libraries it runs certagent with.
type NginxStack struct {
	Binary string
	// LuaLib holds resty/core.lua, resty/lrucache.lua and the Redis client.
	LuaLib string
	// ModulesDir is where the dynamic ndk and Lua modules are loaded from;
	// empty when they are built into the binary (OpenResty).
	ModulesDir string
	// RedisModule is the Redis client LuaLib offers: "resty.redis"
	// (OpenResty) or "nginx.redis" (Debian). certagent uses resty.redis
	// when both are found.
	RedisModule string
}

var (
	stacksMu sync.Mutex
	stacks   = map[string]NginxStack{}
)

// Stack returns the stack under test: EnvNginx and EnvLuaLib, or Debian's
// nginx. A missing binary or library fails the test.
func Stack(t testing.TB) NginxStack {
	t.Helper()
	bin := os.Getenv(EnvNginx)
	if bin == "" {
		bin = Require(t, "nginx", filepath.Dir(debianNginx))
	}
	return StackOf(t, bin, os.Getenv(EnvLuaLib))
}

// NoYieldStack returns an nginx built without OpenResty's ssl_cert_cb_yield
// core change, with its Lua libraries: EnvNginxNoYield, or else the build of
// scripts/openresty-stack --no-yield (cached per source hash; a cold build
// takes a minute or more, and fails the test when the sources or the C
// toolchain are missing).
func NoYieldStack(t testing.TB) NginxStack {
	t.Helper()
	bin := os.Getenv(EnvNginxNoYield)
	if bin == "" {
		cmd := exec.Command(filepath.Join(RepoRoot(), "scripts", "openresty-stack"), "--no-yield")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s is unset and scripts/openresty-stack --no-yield failed: %v\n%s", EnvNginxNoYield, err, stderr.String())
		}
		bin = filepath.Join(strings.TrimSpace(string(out)), "sbin", "nginx")
	}
	return StackOf(t, bin, "")
}

// StackOf describes the nginx at bin, whose Lua libraries are in luaLib
// (empty: PREFIX/lualib beside PREFIX/sbin/nginx, else Debian's).
func StackOf(t testing.TB, bin, luaLib string) NginxStack {
	t.Helper()
	stacksMu.Lock()
	defer stacksMu.Unlock()
	key := bin + "\x00" + luaLib
	if s, ok := stacks[key]; ok {
		return s
	}
	s, err := describeStack(bin, luaLib)
	if err != nil {
		t.Fatalf("the nginx under test: %v", err)
	}
	stacks[key] = s
	return s
}

var (
	builtInLua  = regexp.MustCompile(`--add-module=\S*(lua-nginx-module|ngx_lua)`)
	modulesPath = regexp.MustCompile(`--modules-path=(\S+)`)
)

func describeStack(bin, luaLib string) (NginxStack, error) {
	s := NginxStack{Binary: bin, LuaLib: luaLib}
	if _, err := os.Stat(bin); err != nil {
		return s, fmt.Errorf("%s (%s): %w", bin, EnvNginx, err)
	}
	out, err := exec.Command(bin, "-V").CombinedOutput()
	if err != nil {
		return s, fmt.Errorf("%s -V: %v\n%s", bin, err, out)
	}
	if !builtInLua.Match(out) {
		s.ModulesDir = NginxModulesDir
		if m := modulesPath.FindSubmatch(out); m != nil {
			s.ModulesDir = string(m[1])
		}
		for _, mod := range []string{"ndk_http_module.so", "ngx_http_lua_module.so"} {
			if _, err := os.Stat(filepath.Join(s.ModulesDir, mod)); err != nil {
				return s, fmt.Errorf("%s has no Lua module built in and %s is missing (libnginx-mod-http-lua): %w",
					bin, mod, err)
			}
		}
	}
	if s.LuaLib == "" {
		s.LuaLib = debianLuaLib
		if lualib := filepath.Join(filepath.Dir(filepath.Dir(bin)), "lualib"); isDir(lualib) {
			s.LuaLib = lualib
		}
	}
	for _, lib := range []string{"resty/core.lua", "resty/lrucache.lua"} {
		if _, err := os.Stat(filepath.Join(s.LuaLib, lib)); err != nil {
			return s, fmt.Errorf("%s is missing (%s): %w", lib, EnvLuaLib, err)
		}
	}
	for _, module := range []string{"resty.redis", "nginx.redis"} {
		if _, err := os.Stat(filepath.Join(s.LuaLib, strings.ReplaceAll(module, ".", "/")+".lua")); err == nil {
			s.RedisModule = module
			break
		}
	}
	if s.RedisModule == "" {
		return s, fmt.Errorf("%s holds neither resty/redis.lua nor nginx/redis.lua (%s)", s.LuaLib, EnvLuaLib)
	}
	return s, nil
}

func isDir(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.IsDir()
}

// String names the stack in test messages.
func (s NginxStack) String() string {
	return s.Binary + " (Lua libraries in " + s.LuaLib + ")"
}

// LoadModules returns the main-context load_module lines the stack needs:
// the development kit before the Lua module, or nothing when they are built
// in.
func (s NginxStack) LoadModules() string {
	if s.ModulesDir == "" {
		return ""
	}
	return "load_module " + s.ModulesDir + "/ndk_http_module.so;\n" +
		"load_module " + s.ModulesDir + "/ngx_http_lua_module.so;\n"
}

// LuaPackagePath returns lua_package_path's value: the repository's lua/,
// then the stack's libraries, then nginx's default path.
func (s NginxStack) LuaPackagePath() string {
	return filepath.Join(RepoRoot(), "lua") + "/?.lua;" + s.LuaLib + "/?.lua;;"
}

var debianLoadModule = regexp.MustCompile(`(?m)^[ \t]*load_module[ \t]+\S*/(ndk_http_module|ngx_http_lua_module)\.so;[ \t]*\n`)

// Adapt rewrites a configuration written for Debian's nginx (the shipped
// nginx/nginx.conf and docker/nginx.conf, a test's own) for this stack: its
// load_module lines for the ndk and Lua modules go when they are built in,
// and Debian's Lua library directory becomes the stack's.
func (s NginxStack) Adapt(conf string) string {
	if s.ModulesDir == "" {
		conf = debianLoadModule.ReplaceAllString(conf, "")
	} else if s.ModulesDir != NginxModulesDir {
		conf = strings.ReplaceAll(conf, NginxModulesDir+"/", s.ModulesDir+"/")
	}
	return strings.ReplaceAll(conf, debianLuaLib+"/", s.LuaLib+"/")
}
