package sqlclass

type sqlKeyword uint8

const (
	kwNone sqlKeyword = iota
	kwAlter
	kwAnalyse
	kwAnalyze
	kwCall
	kwConstraints
	kwCopy
	kwCreate
	kwDeallocate
	kwDeclare
	kwDelete
	kwDiscard
	kwDo
	kwDrop
	kwExplain
	kwFor
	kwGrant
	kwHold
	kwInsert
	kwInto
	kwListen
	kwLoad
	kwLocal
	kwLock
	kwMerge
	kwNotify
	kwPrepare
	kwReset
	kwSelect
	kwSet
	kwShare
	kwShow
	kwTable
	kwTemp
	kwTemporary
	kwTransaction
	kwTruncate
	kwUnlisten
	kwUpdate
	kwValues
	kwVerbose
	kwWith
)

type sqlKeywordEntry struct {
	name string
	kw   sqlKeyword
}

// sqlKeywords are the words the classifier acts on, in lower case.
var sqlKeywords = [...]sqlKeywordEntry{
	{"alter", kwAlter},
	{"analyse", kwAnalyse},
	{"analyze", kwAnalyze},
	{"call", kwCall},
	{"constraints", kwConstraints},
	{"copy", kwCopy},
	{"create", kwCreate},
	{"deallocate", kwDeallocate},
	{"declare", kwDeclare},
	{"delete", kwDelete},
	{"discard", kwDiscard},
	{"do", kwDo},
	{"drop", kwDrop},
	{"explain", kwExplain},
	{"for", kwFor},
	{"grant", kwGrant},
	{"hold", kwHold},
	{"insert", kwInsert},
	{"into", kwInto},
	{"listen", kwListen},
	{"load", kwLoad},
	{"local", kwLocal},
	{"lock", kwLock},
	{"merge", kwMerge},
	{"notify", kwNotify},
	{"prepare", kwPrepare},
	{"reset", kwReset},
	{"select", kwSelect},
	{"set", kwSet},
	{"share", kwShare},
	{"show", kwShow},
	{"table", kwTable},
	{"temp", kwTemp},
	{"temporary", kwTemporary},
	{"transaction", kwTransaction},
	{"truncate", kwTruncate},
	{"unlisten", kwUnlisten},
	{"update", kwUpdate},
	{"values", kwValues},
	{"verbose", kwVerbose},
	{"with", kwWith},
}

// maxSQLKeywordLen is the length of the longest keyword.
const maxSQLKeywordLen = 11

// sqlKeywordIndex holds the keywords by length and first letter: most identifiers
// land in an empty bucket, the rest are compared with one or two entries.
var sqlKeywordIndex = func() (idx [maxSQLKeywordLen + 1][26][]sqlKeywordEntry) {
	for _, k := range sqlKeywords {
		b := &idx[len(k.name)][k.name[0]-'a']
		*b = append(*b, k)
	}
	return idx
}()

// lookupSQLKeyword returns the keyword an unquoted identifier spells,
// ignoring ASCII case only, like PostgreSQL.
func lookupSQLKeyword(s string) sqlKeyword {
	if len(s) < 2 || len(s) > maxSQLKeywordLen {
		return kwNone
	}
	first := s[0] | 0x20
	if first < 'a' || first > 'z' {
		return kwNone
	}
	for _, k := range sqlKeywordIndex[len(s)][first-'a'] {
		if sqlHasPrefixFold(s, k.name) {
			return k.kw
		}
	}
	return kwNone
}
