package oracle

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgreplica/pgreplica/internal/sqlclass"
)

// Verdict is what a parse tree says about a text, in the classifier's terms.
type Verdict struct {
	// ReadOnly: every statement is a read (a SELECT without INTO, VALUES,
	// TABLE, SHOW, or EXPLAIN of one of those), with no locking clause,
	// no data-modifying CTE and no call of a function on the classifier's
	// lists.
	ReadOnly bool
	// SessionState: a session SET, or a call the classifier lists as
	// leaving session state. Other session statements (LISTEN, PREPARE, …)
	// are not reads either and are left to the table.
	SessionState bool
	Why          string // the first thing that made it not read-only
}

// Judge computes the verdict of a parse tree.
func Judge(tree *pg_query.ParseResult) Verdict {
	v := Verdict{ReadOnly: len(tree.Stmts) > 0}
	for _, raw := range tree.Stmts {
		top := raw.GetStmt()
		switch n := top.GetNode().(type) {
		case *pg_query.Node_SelectStmt, *pg_query.Node_VariableShowStmt:
		case *pg_query.Node_ExplainStmt:
			switch n.ExplainStmt.GetQuery().GetNode().(type) {
			case *pg_query.Node_SelectStmt:
			default:
				v.notRead("EXPLAIN of a non-query")
			}
		case *pg_query.Node_VariableSetStmt:
			set := n.VariableSetStmt
			if !set.GetIsLocal() && !(set.GetKind() == pg_query.VariableSetKind_VAR_SET_MULTI && strings.HasPrefix(set.GetName(), "TRANSACTION")) {
				v.SessionState = true
			}
			v.notRead("SET")
		default:
			v.notRead(string(top.ProtoReflect().WhichOneof(top.ProtoReflect().Descriptor().Oneofs().Get(0)).Name()))
		}
		walk(top.ProtoReflect(), &v)
	}
	return v
}

func (v *Verdict) notRead(why string) {
	if v.ReadOnly {
		v.ReadOnly = false
		v.Why = why
	}
}

var (
	nodeDesc  = (&pg_query.Node{}).ProtoReflect().Descriptor()
	nodeOneof = nodeDesc.Oneofs().ByName("node")
)

// walk visits every message under m.
func walk(m protoreflect.Message, v *Verdict) {
	switch n := m.Interface().(type) {
	case *pg_query.InsertStmt, *pg_query.UpdateStmt, *pg_query.DeleteStmt, *pg_query.MergeStmt:
		v.notRead("data-modifying statement")
	case *pg_query.IntoClause:
		v.notRead("INTO")
	case *pg_query.LockingClause:
		v.notRead("locking clause")
	case *pg_query.ExecuteStmt:
		v.notRead("EXECUTE")
	case *pg_query.FuncCall:
		if name := n.GetFuncname(); len(name) > 0 {
			last := name[len(name)-1].GetString_().GetSval()
			if listed, session := sqlclass.SideEffectFunc(last); listed {
				v.notRead("call of " + last)
				v.SessionState = v.SessionState || session && !setConfigLocal(n, last)
			}
		}
	}
	if m.Descriptor() == nodeDesc {
		// A Node is a oneof of some 270 node types: look at the one set
		// rather than ranging over them all.
		if fd := m.WhichOneof(nodeOneof); fd != nil {
			walk(m.Get(fd).Message(), v)
		}
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		switch {
		case fd.IsList():
			if fd.Kind() == protoreflect.MessageKind {
				l := val.List()
				for i := 0; i < l.Len(); i++ {
					walk(l.Get(i).Message(), v)
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			walk(val.Message(), v)
		}
		return true
	})
}

// setConfigLocal reports a set_config call whose third argument is the
// constant true (is_local): it lasts for the transaction, as SET LOCAL.
func setConfigLocal(call *pg_query.FuncCall, name string) bool {
	if !strings.EqualFold(name, "set_config") {
		return false
	}
	args := call.GetArgs()
	if len(args) != 3 {
		return false
	}
	c := args[2].GetAConst()
	return c != nil && c.GetBoolval() != nil && c.GetBoolval().GetBoolval()
}
