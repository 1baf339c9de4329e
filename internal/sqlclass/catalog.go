package sqlclass

import "strings"

// CatalogName reports whether an identifier (a name as written, quoted or
// not) names the schema's catalog: the schemas pg_catalog and
// information_schema, anything starting with pg_ (catalog tables and views
// such as pg_class or pg_tables, functions such as pg_get_indexdef or
// pg_table_is_visible), the reg* object-identifier types and the catalog
// functions an ORM's migrator calls. It errs on the side of yes: a wrong
// yes only sends a read that follows DDL to a node that has the DDL.
func CatalogName(name string) bool {
	if len(name) < 3 || len(name) > maxIdentLen {
		return false
	}
	switch {
	case sqlHasPrefixFold(name, "pg_"),
		sqlHasPrefixFold(name, "information_schema"),
		sqlHasPrefixFold(name, "to_reg"),
		sqlHasPrefixFold(name, "has_") && hasSuffixFold(name, "_privilege"):
		return true
	}
	var buf [maxIdentLen]byte
	lower := buf[:len(name)]
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	switch string(lower) { // no allocation: the conversion is only compared
	case "format_type", "obj_description", "col_description", "shobj_description",
		"regclass", "regtype", "regproc", "regprocedure", "regoper", "regoperator",
		"regnamespace", "regrole", "regconfig", "regdictionary", "regcollation":
		return true
	}
	return false
}

func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && strings.EqualFold(s[len(s)-len(suffix):], suffix)
}

// ddlWord reports the first words of statements that change the schema and
// that the classifier has no keyword for.
func ddlWord(w string) bool {
	switch len(w) {
	case 6:
		return sqlHasPrefixFold(w, "revoke") || sqlHasPrefixFold(w, "import")
	case 7:
		return sqlHasPrefixFold(w, "comment") || sqlHasPrefixFold(w, "refresh") ||
			sqlHasPrefixFold(w, "reindex") || sqlHasPrefixFold(w, "cluster")
	case 8:
		return sqlHasPrefixFold(w, "security")
	}
	return false
}
