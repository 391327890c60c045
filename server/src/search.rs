//! Keyword search over the catalogue: a small inverted index at the edge, out of the
//! deterministic core like the nearby index, rebuilt when the global tables move.
//!
//! Names and queries are split into words (runs of letters and digits, lower-cased). An item
//! matches when every query word is a word of its name, the last one possibly as a prefix (so a
//! query typed letter by letter matches as it goes). Ranking: more whole-word matches first,
//! then fewer words in the name (the more specific item), then the smaller SKU: a total order,
//! so pages never overlap or skip and every node answers the same.

use std::collections::BTreeMap;

use ordo_scheduler::ItemRecord;

/// Bytes in a query, and words in it.
pub const QUERY_BYTES_MAX: usize = 256;
pub const QUERY_WORDS_MAX: usize = 8;

/// One catalogue item as the index holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub sku: u32,
    pub name: String,
    pub price_cents: i64,
    /// Distinct words of the name.
    words: u32,
}

/// Where a hit stands in the ranking; a page token is the key of the last hit it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    /// `u32::MAX - whole-word matches`, so that ascending order is best first.
    misses: u32,
    words: u32,
    sku: u32,
}

impl Rank {
    pub fn score(&self) -> u32 {
        u32::MAX - self.misses
    }

    pub fn token(&self) -> String {
        format!("{}.{}.{}", self.misses, self.words, self.sku)
    }

    pub fn parse(token: &str) -> Option<Rank> {
        let mut parts = token.split('.').map(|p| p.parse::<u32>().ok());
        let rank = Rank {
            misses: parts.next()??,
            words: parts.next()??,
            sku: parts.next()??,
        };
        parts.next().is_none().then_some(rank)
    }
}

pub struct SearchIndex {
    /// By SKU.
    entries: Vec<Entry>,
    /// Word to the positions in `entries` of the items whose name has it, ascending.
    postings: BTreeMap<String, Vec<u32>>,
    /// The store's global version it was built from.
    pub version: u64,
}

/// The words of a name or a query.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The positions in both sorted lists.
fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small
        .iter()
        .copied()
        .filter(|x| large.binary_search(x).is_ok())
        .collect()
}

impl SearchIndex {
    pub fn build(items: &[ItemRecord], version: u64) -> Self {
        let mut entries = Vec::with_capacity(items.len());
        let mut postings: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (at, item) in items.iter().enumerate() {
            let mut own = words(&item.name);
            own.sort();
            own.dedup();
            entries.push(Entry {
                sku: item.sku,
                name: item.name.clone(),
                price_cents: item.price_cents,
                words: own.len() as u32,
            });
            for word in own {
                postings.entry(word).or_default().push(at as u32);
            }
        }
        Self {
            entries,
            postings,
            version,
        }
    }

    /// Every item matching `query`, best first, with its rank; `Err` says why the query is
    /// not one.
    pub fn search(&self, query: &str) -> Result<Vec<(Rank, &Entry)>, String> {
        if query.len() > QUERY_BYTES_MAX {
            return Err(format!(
                "query is {} bytes, the limit is {QUERY_BYTES_MAX}",
                query.len()
            ));
        }
        let mut asked = words(query);
        if asked.is_empty() || asked.len() > QUERY_WORDS_MAX {
            return Err(format!(
                "query must have 1 to {QUERY_WORDS_MAX} words (letters and digits), not {}",
                asked.len()
            ));
        }
        asked.dedup();
        let last = asked.pop().unwrap_or_default();
        let mut matched: Option<Vec<u32>> = None;
        for word in &asked {
            let list = self.postings.get(word).map(Vec::as_slice).unwrap_or(&[]);
            matched = Some(match matched {
                None => list.to_vec(),
                Some(so_far) => intersect(&so_far, list),
            });
        }
        // The last word: whole, or as the prefix of a longer word.
        let whole: &[u32] = self.postings.get(&last).map(Vec::as_slice).unwrap_or(&[]);
        let mut prefixed: Vec<u32> = self
            .postings
            .range(last.clone()..)
            .take_while(|(w, _)| w.starts_with(last.as_str()))
            .flat_map(|(_, list)| list.iter().copied())
            .collect();
        prefixed.sort_unstable();
        prefixed.dedup();
        let found = match matched {
            None => prefixed,
            Some(so_far) => intersect(&so_far, &prefixed),
        };
        let whole_words = asked.len() as u32;
        let mut hits: Vec<(Rank, &Entry)> = found
            .into_iter()
            .map(|at| {
                let entry = &self.entries[at as usize];
                let exact = whole.binary_search(&at).is_ok();
                let rank = Rank {
                    misses: u32::MAX - (whole_words + u32::from(exact)),
                    words: entry.words,
                    sku: entry.sku,
                };
                (rank, entry)
            })
            .collect();
        hits.sort_unstable_by_key(|(rank, _)| *rank);
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(names: &[(u32, &str)]) -> SearchIndex {
        let items: Vec<ItemRecord> = names
            .iter()
            .map(|&(sku, name)| ItemRecord {
                sku,
                name: name.into(),
                price_cents: 100,
            })
            .collect();
        SearchIndex::build(&items, 1)
    }

    fn skus(index: &SearchIndex, query: &str) -> Vec<u32> {
        index
            .search(query)
            .unwrap()
            .iter()
            .map(|(_, e)| e.sku)
            .collect()
    }

    #[test]
    fn every_word_must_match_and_the_last_may_be_a_prefix() {
        let index = index(&[
            (1, "Amul Milk 1L"),
            (2, "Milk Bread"),
            (3, "Chocolate Milkshake"),
            (4, "Amul Butter"),
            (5, "Nandini Milk, toned, 500 ml"),
        ]);
        // Whole-word matches first (shorter names first), then prefix matches.
        assert_eq!(skus(&index, "milk"), vec![2, 1, 5, 3]);
        assert_eq!(skus(&index, "MILK amul"), vec![1]);
        assert_eq!(skus(&index, "amul mi"), vec![1]);
        assert_eq!(skus(&index, "amu"), vec![4, 1]);
        assert_eq!(skus(&index, "bread milk"), vec![2]);
        assert_eq!(skus(&index, "milk bre"), vec![2]);
        // A prefix only on the last word.
        assert!(skus(&index, "mil bread").is_empty());
        assert!(skus(&index, "paneer").is_empty());
        assert!(index.search("  ,, ").is_err());
        assert!(index.search(&"w ".repeat(9)).is_err());
    }

    #[test]
    fn ranks_are_a_total_order_that_round_trips_as_tokens() {
        let index = index(&[(7, "Tea"), (3, "Tea"), (9, "Green Tea")]);
        let hits = index.search("tea").unwrap();
        assert_eq!(
            hits.iter().map(|(_, e)| e.sku).collect::<Vec<_>>(),
            vec![3, 7, 9]
        );
        for (rank, _) in &hits {
            assert_eq!(Rank::parse(&rank.token()), Some(*rank));
        }
        assert_eq!(Rank::parse("1.2"), None);
        assert_eq!(Rank::parse("1.2.3.4"), None);
        assert_eq!(Rank::parse("x.2.3"), None);
    }

    #[test]
    fn unicode_names_are_lower_cased() {
        let index = index(&[(1, "Café Crème"), (2, "ÇAY")]);
        assert_eq!(skus(&index, "café"), vec![1]);
        assert_eq!(skus(&index, "çay"), vec![2]);
        assert_eq!(skus(&index, "crè"), vec![1]);
    }
}
