package sqlclass

// pureNames are the names that may stand before a '(' in a text that has
// no effect wherever it runs: built-in functions without side effects
// (they read, compute or wait, and change nothing on any server or
// session), type names with a modifier (varchar(10)), and SQL keywords
// that precede a parenthesis without being a call (IN (…), EXISTS (…),
// OVER (…)). Any other name before a '(' may be a user function, which
// may write or act on the server it runs on (SELECT my_write_fn()), and
// makes the text impure. Names are in lower case; a call counts only
// unqualified or qualified with pg_catalog (a function of the same name in
// another schema is the user's).
//
// Keep this list to functions whose effect is nothing but their result:
// no sequence, lock, setting, notification, large-object or WAL function,
// nothing on sideEffectFuncs, and no random number (its seed is session
// state).
var pureNames = func() map[string]struct{} {
	m := make(map[string]struct{})
	for _, group := range [][]string{
		// SQL syntax before a parenthesis.
		{"select", "from", "where", "and", "or", "not", "in", "exists", "any", "some", "all",
			"values", "on", "using", "as", "join", "lateral", "over", "filter", "within",
			"group", "by", "having", "order", "partition", "rows", "range", "groups",
			"between", "like", "ilike", "similar", "escape", "is", "distinct", "case", "when", "then",
			"else", "end", "array", "row", "cast", "extract", "position", "substring", "trim",
			"overlay", "coalesce", "nullif", "greatest", "least", "grouping", "rollup", "cube",
			"sets", "limit", "offset", "fetch", "union", "intersect", "except", "with",
			"recursive", "materialized", "table", "collate", "zone", "only", "explain", "analyze",
			"analyse", "verbose", "ordinality", "normalize", "treat", "xmlelement", "xmlforest",
			"xmlconcat", "xmlparse", "xmlserialize", "xmlroot", "xmlexists", "xmlattributes",
			"current_time", "current_timestamp", "localtime", "localtimestamp", "ties", "first", "next"},
		// Type names with a modifier, and casts written as calls.
		{"varchar", "char", "character", "varying", "bpchar", "numeric", "decimal", "timestamp",
			"timestamptz", "time", "timetz", "interval", "bit", "varbit", "float", "float4",
			"float8", "int", "int2", "int4", "int8", "integer", "smallint", "bigint", "text",
			"bool", "boolean", "date", "json", "jsonb", "uuid", "bytea", "name", "oid", "inet",
			"cidr", "macaddr", "money", "real"},
		// Aggregates and window functions.
		{"count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "array_agg",
			"string_agg", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
			"json_agg_strict", "jsonb_agg_strict", "stddev", "stddev_pop", "stddev_samp",
			"variance", "var_pop", "var_samp", "percentile_cont", "percentile_disc", "mode",
			"bit_and", "bit_or", "bit_xor", "corr", "covar_pop", "covar_samp", "regr_slope",
			"regr_intercept", "regr_count", "regr_r2", "range_agg", "range_intersect_agg",
			"row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag",
			"lead", "first_value", "last_value", "nth_value"},
		// Date and time.
		{"now", "clock_timestamp", "statement_timestamp", "transaction_timestamp", "timeofday",
			"date_trunc", "date_part", "date_bin", "age", "to_char", "to_date", "to_timestamp",
			"to_number", "make_date", "make_time", "make_timestamp", "make_timestamptz",
			"make_interval", "justify_days", "justify_hours", "justify_interval", "isfinite",
			"timezone", "overlaps"},
		// Strings.
		{"lower", "upper", "initcap", "length", "char_length", "character_length",
			"octet_length", "bit_length", "concat", "concat_ws", "format", "left", "right",
			"lpad", "rpad", "ltrim", "rtrim", "btrim", "replace", "reverse", "repeat",
			"split_part", "strpos", "starts_with", "md5", "sha224", "sha256", "sha384", "sha512",
			"encode", "decode", "quote_ident", "quote_literal", "quote_nullable", "regexp_match",
			"regexp_matches", "regexp_replace", "regexp_split_to_array", "regexp_split_to_table",
			"regexp_like", "regexp_count", "regexp_instr", "regexp_substr", "translate", "ascii",
			"chr", "to_hex", "unistr", "string_to_array", "string_to_table", "array_to_string",
			"substr", "convert_from", "convert_to", "to_ascii", "casefold"},
		// Numbers.
		{"abs", "ceil", "ceiling", "floor", "round", "trunc", "mod", "power", "pow", "sqrt",
			"cbrt", "exp", "ln", "log", "log10", "sign", "div", "pi", "degrees", "radians", "sin",
			"cos", "tan", "asin", "acos", "atan", "atan2", "gcd", "lcm", "width_bucket", "scale",
			"min_scale", "trim_scale", "factorial"},
		// Arrays, ranges, sets.
		{"array_length", "array_lower", "array_upper", "array_ndims", "array_dims",
			"array_position", "array_positions", "array_append", "array_prepend", "array_cat",
			"array_remove", "array_replace", "cardinality", "unnest", "generate_series",
			"generate_subscripts", "array_fill", "trim_array", "int4range", "int8range",
			"numrange", "tsrange", "tstzrange", "daterange", "lower_inc", "upper_inc", "isempty",
			"range_merge"},
		// JSON.
		{"to_json", "to_jsonb", "json_build_object", "jsonb_build_object", "json_build_array",
			"jsonb_build_array", "json_object", "jsonb_object", "json_array_length",
			"jsonb_array_length", "json_each", "jsonb_each", "json_each_text", "jsonb_each_text",
			"json_extract_path", "jsonb_extract_path", "json_extract_path_text",
			"jsonb_extract_path_text", "json_object_keys", "jsonb_object_keys",
			"json_array_elements", "jsonb_array_elements", "json_array_elements_text",
			"jsonb_array_elements_text", "json_typeof", "jsonb_typeof", "jsonb_set",
			"jsonb_set_lax", "jsonb_insert", "jsonb_strip_nulls", "json_strip_nulls",
			"jsonb_pretty", "jsonb_path_query", "jsonb_path_exists", "jsonb_path_match",
			"jsonb_path_query_array", "jsonb_path_query_first", "row_to_json", "array_to_json",
			"json_populate_record", "jsonb_populate_record", "json_populate_recordset",
			"jsonb_populate_recordset", "json_to_record", "jsonb_to_record",
			"json_to_recordset", "jsonb_to_recordset", "json_array", "json_scalar",
			"json_serialize", "json_exists", "json_value", "json_query", "json_table"},
		// Text search, network.
		{"to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery",
			"websearch_to_tsquery", "ts_rank", "ts_rank_cd", "ts_headline", "setweight",
			"host", "network", "masklen", "family", "broadcast", "netmask", "hostmask"},
		// The session and the server, read only; waiting.
		{"inet_server_port", "inet_server_addr", "inet_client_addr", "inet_client_port",
			"pg_backend_pid", "version", "current_database", "current_schema",
			"current_schemas", "current_setting", "pg_is_in_recovery", "pg_last_wal_replay_lsn",
			"pg_last_wal_receive_lsn", "pg_last_xact_replay_timestamp", "pg_is_wal_replay_paused",
			"pg_get_wal_replay_pause_state", "pg_postmaster_start_time", "pg_conf_load_time",
			"pg_typeof", "pg_column_size", "pg_relation_size", "pg_total_relation_size",
			"pg_table_size", "pg_indexes_size", "pg_database_size", "pg_size_pretty",
			"pg_size_bytes", "pg_sleep", "pg_sleep_for", "pg_sleep_until", "has_table_privilege",
			"has_schema_privilege", "has_database_privilege", "has_column_privilege",
			"has_function_privilege", "has_sequence_privilege", "pg_has_role", "pg_get_viewdef",
			"pg_get_indexdef", "pg_get_constraintdef", "pg_get_functiondef", "pg_get_expr",
			"pg_get_userbyid", "pg_get_serial_sequence", "pg_get_triggerdef",
			"pg_table_is_visible", "pg_type_is_visible", "pg_function_is_visible",
			"to_regclass", "to_regtype", "to_regproc", "to_regprocedure", "to_regnamespace",
			"to_regrole", "obj_description", "col_description", "shobj_description",
			"format_type", "pg_wal_lsn_diff", "pg_encoding_to_char", "pg_char_to_encoding",
			"pg_jit_available", "pg_tablespace_location", "pg_relation_filenode",
			"pg_relation_filepath", "pg_get_keywords", "pg_input_is_valid",
			"pg_input_error_info", "num_nulls", "num_nonnulls", "lo_get"},
	} {
		for _, name := range group {
			m[name] = struct{}{}
		}
	}
	return m
}()

// PureFunc reports whether a name before a '(' (the last part of a
// qualified name, as written between quotes or without them) is one that
// keeps a text without effect wherever it runs: see pureNames. Unquoted
// names fold to lower case as PostgreSQL folds them.
func PureFunc(name string, quoted bool) bool {
	if len(name) > maxIdentLen || name == "" {
		return false
	}
	var buf [maxIdentLen]byte
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			if quoted {
				return false // "Lower" names another function than lower
			}
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	_, ok := pureNames[string(buf[:len(name)])] // no allocation for a map key
	return ok
}
