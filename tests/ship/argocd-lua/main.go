// argocd-lua evaluates an Argo CD resource health script the way the Argo CD application
// controller does (util/lua/lua.go): gopher-lua (Lua 5.1) with only the package, base and table
// libraries unless -open-libs (resource.customizations.useOpenLibs), the resource as global `obj`
// decoded from JSON (every number a float), a 1 s time limit, and the chunk's returned table as
// the health status. Argo CD also installs a restricted `os`; our scripts do not use it.
//
// Usage: argocd-lua [-open-libs] SCRIPT < object.json   -> {"status": ..., "message": ...} on stdout
// A Lua error, a timeout or a non-table result exits 1 with the reason on stderr. Test tool only.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

func decode(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case bool:
		return lua.LBool(x)
	case float64:
		return lua.LNumber(x)
	case string:
		return lua.LString(x)
	case []any:
		t := L.CreateTable(len(x), 0)
		for _, item := range x {
			t.Append(decode(L, item))
		}
		return t
	case map[string]any:
		t := L.CreateTable(0, len(x))
		for k, item := range x {
			t.RawSetH(lua.LString(k), decode(L, item))
		}
		return t
	}
	return lua.LNil
}

func encode(v lua.LValue) any {
	switch x := v.(type) {
	case lua.LBool:
		return bool(x)
	case lua.LNumber:
		return float64(x)
	case lua.LString:
		return string(x)
	case *lua.LTable:
		m := map[string]any{}
		x.ForEach(func(k, val lua.LValue) { m[k.String()] = encode(val) })
		return m
	}
	return nil
}

func main() {
	openLibs := flag.Bool("open-libs", false, "load every standard library (Argo CD's useOpenLibs)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua [-open-libs] SCRIPT < object.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var obj any
	if err := json.Unmarshal(raw, &obj); err != nil {
		fmt.Fprintln(os.Stderr, "object:", err)
		os.Exit(2)
	}
	L := lua.NewState(lua.Options{SkipOpenLibs: !*openLibs})
	defer L.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		if err := L.CallByParam(lua.P{Fn: L.NewFunction(lib.fn), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			panic(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", decode(L, obj))
	if err := L.DoString(string(script)); err != nil {
		fmt.Fprintln(os.Stderr, "lua:", err)
		os.Exit(1)
	}
	ret := L.Get(-1)
	if ret.Type() != lua.LTTable {
		fmt.Fprintf(os.Stderr, "expect table output from Lua script, not %s\n", ret.Type())
		os.Exit(1)
	}
	out, _ := json.Marshal(encode(ret))
	fmt.Println(string(out))
}
