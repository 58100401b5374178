//! The full-text index: a tantivy index of message bodies, room names and topics.
//!
//! One document per searchable event: its id, room, sender, which content key the text came
//! from, the text (English-stemmed, case- and accent-folded, as Synapse's PostgreSQL search
//! does), its timestamp and stream position. The committed index records in its commit payload
//! the stream position it covers, so after a crash the indexer resumes from there and the index
//! and the event store never disagree for long.

use std::collections::HashSet;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use tantivy::collector::{Count, FilterCollector, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermSetQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    TextAnalyzer,
};
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term,
};

use crate::{Error, Result};

const TOKENIZER: &str = "hearth_en";
/// A fast column with a hash of each document's room: searches keep the user's rooms by
/// reading it for the text matches only. (A term set over room ids read every posting of every
/// room the user is in, on every search.)
const ROOM_FIELD: &str = "room";

/// The room column's value for a room.
fn room_hash(room_id: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(room_id.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("eight bytes"))
}
/// The most words (and phrase words) of a search term that reach the index; the rest are left
/// out. A search box needs a few; thousands only make a slow query.
const MAX_QUERY_WORDS: usize = 64;

/// The words and quoted phrases of a search term, rebuilt in the small part of tantivy's query
/// grammar that a search box needs (words, `"phrases"`, `OR`). The raw term never reaches the
/// parser: its grammar nests (parentheses, `+`/`-` prefixes, field names, ranges), and a term of
/// 1,000 `(` overflowed a worker's stack and killed the process.
pub(crate) fn query_text(term: &str) -> String {
    let mut out = String::new();
    let mut budget = MAX_QUERY_WORDS;
    // Between quotes (odd pieces) the words are a phrase; an unclosed quote runs to the end.
    for (i, piece) in term.split('"').enumerate() {
        let words: Vec<&str> = piece
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(budget)
            .collect();
        budget -= words.len();
        if words.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        if i % 2 == 1 {
            out.push('"');
            out.push_str(&words.join(" "));
            out.push('"');
        } else {
            out.push_str(&words.join(" "));
        }
        if budget == 0 {
            break;
        }
    }
    out
}

/// The writer's indexing memory: tantivy flushes a segment when it is full.
const WRITER_HEAP: usize = 50_000_000;

#[derive(Clone, Copy)]
struct Fields {
    event_id: Field,
    room: Field,
    sender: Field,
    key: Field,
    text: Field,
    ts: Field,
    pos: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        event_id: b.add_text_field("event_id", STRING | STORED),
        room: b.add_u64_field(ROOM_FIELD, FAST),
        sender: b.add_text_field("sender", STRING),
        key: b.add_text_field("key", STRING),
        text: b.add_text_field("text", text),
        ts: b.add_u64_field("ts", INDEXED | FAST),
        pos: b.add_u64_field("pos", INDEXED | FAST | STORED),
    };
    (b.build(), fields)
}

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(64))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(Stemmer::new(Language::English))
        .build()
}

fn index_error(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("search index: {e}"))
}

/// A searchable event.
pub struct Doc<'a> {
    pub event_id: &'a str,
    pub room_id: &'a str,
    pub sender: &'a str,
    /// `content.body`, `content.name` or `content.topic`.
    pub key: &'a str,
    pub text: &'a str,
    pub ts: u64,
    pub pos: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchOrder {
    Rank,
    Recent,
}

/// What to look for, in which rooms. Owned, so a search can run on a blocking thread.
#[derive(Clone)]
pub struct IndexQuery {
    pub term: String,
    pub rooms: Vec<String>,
    pub keys: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub since_ts: Option<u64>,
    pub until_ts: Option<u64>,
    /// Only events before this stream position (paging `recent`).
    pub before_pos: Option<u64>,
    pub order: SearchOrder,
    pub offset: usize,
    pub limit: usize,
}

pub struct Hit {
    pub event_id: String,
    pub pos: u64,
    pub score: f32,
}

pub struct SearchIndex {
    index: Index,
    fields: Fields,
    writer: Mutex<IndexWriter>,
    reader: IndexReader,
}

impl SearchIndex {
    /// Opens the index in `dir`, or an index in memory. An index that does not open (made with
    /// another schema, damaged) is thrown away and rebuilt from the event store.
    pub fn open(dir: Option<&Path>) -> Result<Self> {
        let (schema, fields) = schema();
        let index = match dir {
            None => Index::create_in_ram(schema),
            Some(dir) => match Self::open_dir(dir, &schema) {
                Ok(index) => index,
                Err(e) => {
                    tracing::warn!(error = %e, "search index unusable; rebuilding it");
                    std::fs::remove_dir_all(dir).map_err(index_error)?;
                    Self::open_dir(dir, &schema)?
                }
            },
        };
        index.tokenizers().register(TOKENIZER, analyzer());
        let writer = index
            .writer_with_num_threads(1, WRITER_HEAP)
            .map_err(index_error)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(index_error)?;
        Ok(Self {
            index,
            fields,
            writer: Mutex::new(writer),
            reader,
        })
    }

    fn open_dir(dir: &Path, schema: &Schema) -> Result<Index> {
        std::fs::create_dir_all(dir).map_err(index_error)?;
        let mmap = tantivy::directory::MmapDirectory::open(dir).map_err(index_error)?;
        Index::open_or_create(mmap, schema.clone()).map_err(index_error)
    }

    /// The stream position the committed index covers.
    pub fn cursor(&self) -> Result<u64> {
        let metas = self.index.load_metas().map_err(index_error)?;
        Ok(metas
            .payload
            .and_then(|p| p.parse().ok())
            .unwrap_or_default())
    }

    pub fn add(&self, doc: &Doc<'_>) -> Result<()> {
        let f = self.fields;
        let mut d = TantivyDocument::default();
        d.add_text(f.event_id, doc.event_id);
        d.add_u64(f.room, room_hash(doc.room_id));
        d.add_text(f.sender, doc.sender);
        d.add_text(f.key, doc.key);
        d.add_text(f.text, doc.text);
        d.add_u64(f.ts, doc.ts);
        d.add_u64(f.pos, doc.pos);
        self.writer.lock().add_document(d).map_err(index_error)?;
        Ok(())
    }

    pub fn delete(&self, event_id: &str) {
        self.writer
            .lock()
            .delete_term(Term::from_field_text(self.fields.event_id, event_id));
    }

    /// Makes everything added and deleted durable and searchable, recording that the index now
    /// covers the stream up to `cursor`.
    pub fn commit(&self, cursor: u64) -> Result<()> {
        {
            let mut writer = self.writer.lock();
            let mut prepared = writer.prepare_commit().map_err(index_error)?;
            prepared.set_payload(&cursor.to_string());
            prepared.commit().map_err(index_error)?;
        }
        self.reader.reload().map_err(index_error)
    }

    /// Matching events, best (or newest) first, and how many match in all.
    pub fn search(&self, q: &IndexQuery) -> Result<(Vec<Hit>, usize)> {
        let f = self.fields;
        if q.rooms.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let mut parser = QueryParser::for_index(&self.index, vec![f.text]);
        parser.set_conjunction_by_default();
        // Lenient: a search box is not a query language; what does not parse is left out.
        let (text, _) = parser.parse_query_lenient(&query_text(&q.term));
        let terms = |field: Field, values: &[String]| -> Box<dyn Query> {
            Box::new(TermSetQuery::new(
                values.iter().map(|v| Term::from_field_text(field, v)),
            ))
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, text)];
        // Every document has one of the three keys: asking for all of them filters nothing.
        if q.keys.len() < crate::search::ALL_KEYS.len() {
            clauses.push((Occur::Must, terms(f.key, &q.keys)));
        }
        if let Some(senders) = &q.senders {
            clauses.push((Occur::Must, terms(f.sender, senders)));
        }
        if !q.not_senders.is_empty() {
            clauses.push((Occur::MustNot, terms(f.sender, &q.not_senders)));
        }
        if q.since_ts.is_some() || q.until_ts.is_some() {
            let bound = |v: Option<u64>, inclusive: bool| match v {
                None => Bound::Unbounded,
                Some(v) if inclusive => Bound::Included(Term::from_field_u64(f.ts, v)),
                Some(v) => Bound::Excluded(Term::from_field_u64(f.ts, v)),
            };
            clauses.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    bound(q.since_ts, true),
                    bound(q.until_ts, false),
                )),
            ));
        }
        if let Some(before) = q.before_pos {
            clauses.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    Bound::Unbounded,
                    Bound::Excluded(Term::from_field_u64(f.pos, before)),
                )),
            ));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let rooms: Arc<HashSet<u64>> = Arc::new(q.rooms.iter().map(|r| room_hash(r)).collect());
        let in_rooms = move |h: u64| rooms.contains(&h);
        let top = TopDocs::with_limit(q.limit.max(1)).and_offset(q.offset);
        let count = FilterCollector::new(ROOM_FIELD.to_owned(), in_rooms.clone(), Count);
        let (found, count): (Vec<(f32, DocAddress)>, usize) = match q.order {
            SearchOrder::Rank => searcher.search(
                &query,
                &(
                    FilterCollector::new(ROOM_FIELD.to_owned(), in_rooms.clone(), top),
                    count,
                ),
            ),
            SearchOrder::Recent => searcher
                .search(
                    &query,
                    &(
                        FilterCollector::new(
                            ROOM_FIELD.to_owned(),
                            in_rooms.clone(),
                            top.order_by_fast_field::<u64>("pos", Order::Desc),
                        ),
                        count,
                    ),
                )
                .map(|(docs, n)| (docs.into_iter().map(|(_, a)| (0.0, a)).collect(), n)),
        }
        .map_err(index_error)?;
        let mut hits = Vec::with_capacity(found.len());
        for (score, addr) in found {
            let doc: TantivyDocument = searcher.doc(addr).map_err(index_error)?;
            let event_id = doc.get_first(f.event_id).and_then(|v| v.as_str());
            let pos = doc.get_first(f.pos).and_then(|v| v.as_u64());
            if let (Some(event_id), Some(pos)) = (event_id, pos) {
                hits.push(Hit {
                    event_id: event_id.to_owned(),
                    pos,
                    score,
                });
            }
        }
        Ok((hits, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_text_keeps_words_and_phrases_only() {
        assert_eq!(query_text("pizza"), "pizza");
        assert_eq!(query_text("  hot   pizza "), "hot pizza");
        assert_eq!(query_text("\"hot pizza\" tonight"), "\"hot pizza\" tonight");
        assert_eq!(query_text("cats OR dogs"), "cats OR dogs");
        assert_eq!(
            query_text("((((a)))) +b -c title:d [e TO f]"),
            "a b c title d e TO f"
        );
        assert_eq!(query_text("\"unclosed phrase"), "\"unclosed phrase\"");
        assert_eq!(query_text("\"\" ()"), "");
        assert_eq!(query_text("Grüße, 世界!"), "Grüße 世界");
        let long = "w ".repeat(1000);
        assert_eq!(query_text(&long).split(' ').count(), MAX_QUERY_WORDS);
    }

    #[test]
    fn hostile_terms_parse_without_recursion() {
        let (schema, fields) = schema();
        let index = Index::create_in_ram(schema);
        index.tokenizers().register(TOKENIZER, analyzer());
        let parser = QueryParser::for_index(&index, vec![fields.text]);
        for term in [
            "(".repeat(100_000),
            "\"".repeat(100_000),
            "-".repeat(100_000) + "a",
            "NOT ".repeat(10_000),
            "a OR ".repeat(10_000),
            "[".repeat(10_000) + " TO " + &"]".repeat(10_000),
        ] {
            let _ = parser.parse_query_lenient(&query_text(&term));
        }
    }
}

/// Fuzzing: any term, however nested or long, turns into a query that parses without deep
/// recursion and carries at most [`MAX_QUERY_WORDS`] words.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn parser() -> QueryParser {
        let (schema, fields) = schema();
        let index = Index::create_in_ram(schema);
        index.tokenizers().register(TOKENIZER, analyzer());
        QueryParser::for_index(&index, vec![fields.text])
    }

    proptest! {
        #[test]
        fn any_term_parses(term in "[()\\[\\]{}\"'+\\-~^*:!&| a-zA-Z0-9éß世]{0,400}") {
            let text = query_text(&term);
            prop_assert!(text.split_whitespace().count() <= MAX_QUERY_WORDS);
            let _ = parser().parse_query_lenient(&text);
        }

        #[test]
        fn any_unicode_term_parses(term in any::<String>()) {
            let _ = parser().parse_query_lenient(&query_text(&term));
        }
    }
}
