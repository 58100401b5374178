# Sourced by run.sh and run-federation.sh: compares a SyTest run's results with a known-failures
# list ("name<TAB>reason" a line; blank lines and lines starting with # are notes). A failure not
# on the list fails; a listed test that passes is named, so that the list only shrinks.
#
#   compare_with_known LIST OUT    (OUT: the run's folder, with results.tsv and sytest.tap)
compare_with_known() {
  local list=$1 out=$2 name known failed passed new fixed
  name=${list#"$ROOT"/}
  known=$(grep -v '^#' "$list" | grep -v '^[[:space:]]*$' | cut -f1 | sort -u)
  failed=$(awk -F'\t' '$1 == "FAIL" { print $2 }' "$out/results.tsv" | sort -u)
  # A multi-test that passes is named with its count of subtests.
  passed=$(awk -F'\t' '$1 == "PASS" { print $2 }' "$out/results.tsv" \
    | sed -E 's/ \([0-9]+ subtests\)$//' | sort -u)
  new=$(comm -23 <(echo "$failed") <(echo "$known") | grep -v '^$')
  # (Some names belong to two tests: a name is fixed when no test of that name failed.)
  fixed=$(comm -12 <(echo "$passed") <(echo "$known") | comm -23 - <(echo "$failed") | grep -v '^$')

  if [ -n "$fixed" ]; then
    echo "sytest: these pass now; take them off $name:"
    echo "$fixed" | sed 's/^/  /'
  fi
  if [ -n "$new" ]; then
    echo "sytest: failures not on $name (diagnostics in $out/sytest.tap):"
    echo "$new" | sed 's/^/  /'
    return 1
  fi
  if ! grep -qE '^1\.\.[0-9]+$' "$out/sytest.tap"; then
    echo "sytest: the run did not finish; see $out/sytest.stderr" >&2
    return 1
  fi
  echo "sytest: no failure beyond the known ones ($(echo "$known" | grep -c .) listed)"
}
