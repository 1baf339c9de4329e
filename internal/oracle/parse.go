package oracle

/*
// The symbols come from pg_query_go's parser package, linked into the same
// binary; pg_query_go itself exposes no way to pass parser options.
#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-all
#include <stdlib.h>
#include <stddef.h>
typedef struct { char* message; char* funcname; char* filename; int lineno; int cursorpos; char* context; } PgQueryError;
typedef struct { size_t len; char* data; } PgQueryProtobuf;
typedef struct { PgQueryProtobuf parse_tree; char* stderr_buffer; PgQueryError* error; } PgQueryProtobufParseResult;
PgQueryProtobufParseResult pg_query_parse_protobuf_opts(const char* input, int parser_options);
void pg_query_free_protobuf_parse_result(PgQueryProtobufParseResult result);
*/
import "C"

import (
	"errors"
	"unsafe"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	_ "github.com/pganalyze/pg_query_go/v6/parser" // provides the C symbols above
	"google.golang.org/protobuf/proto"
)

// pgQueryDisableStandardConformingStrings is libpg_query's
// PG_QUERY_DISABLE_STANDARD_CONFORMING_STRINGS parser option.
const pgQueryDisableStandardConformingStrings = 32

// Parse parses sql with PostgreSQL's raw parser, with
// standard_conforming_strings on or off.
func Parse(sql string, standardConformingStrings bool) (*pg_query.ParseResult, error) {
	in := C.CString(sql)
	defer C.free(unsafe.Pointer(in))
	opts := C.int(0)
	if !standardConformingStrings {
		opts = pgQueryDisableStandardConformingStrings
	}
	r := C.pg_query_parse_protobuf_opts(in, opts)
	defer C.pg_query_free_protobuf_parse_result(r)
	if r.error != nil {
		return nil, errors.New(C.GoString(r.error.message))
	}
	var tree pg_query.ParseResult
	data := C.GoBytes(unsafe.Pointer(r.parse_tree.data), C.int(r.parse_tree.len))
	if err := proto.Unmarshal(data, &tree); err != nil {
		return nil, err
	}
	return &tree, nil
}
