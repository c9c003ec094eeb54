"""Generates the synthetic PII evaluation set data/pii/prompts.jsonl: chat prompts built from
templates, with every inserted value's kind and byte span recorded. Names, companies, towns,
phone numbers, IBANs and card numbers come from Faker (several locales), not from the lists the
detector reads (US Census names, GeoNames, wordfreq). Needs `pip install faker==40.63.0`; the
output is committed, so the evaluation itself needs no Python.

Two splits. `dev` (data/pii/prompts.jsonl) is the set the detector was tuned on. `test`
(data/pii/prompts-test.jsonl) was generated once, after tuning, from a different seed, other
name locales and templates the detector never saw, including prompts with no personal data but
capitalised product names, titles and public figures. Its first numbers were recorded before
any change; some rules were then fixed on it, so it is no longer fresh. `fresh`
(data/pii/prompts-fresh.jsonl) uses the test templates with a third seed and yet other locales,
generated once after the last change to the detector: its numbers are the ones to quote. Usage:
    python3 scripts/pii_generate.py dev > data/pii/prompts.jsonl
    python3 scripts/pii_generate.py test > data/pii/prompts-test.jsonl
    python3 scripts/pii_generate.py fresh > data/pii/prompts-fresh.jsonl"""
import json, random, sys

from faker import Faker

SPLIT = sys.argv[1] if len(sys.argv) > 1 else "dev"
SEED = {"dev": 20261202, "test": 20261203, "fresh": 20261204}[SPLIT]
N = 364 if SPLIT == "dev" else 420
LOCALES = {"dev": ["en_GB", "de_DE", "fr_FR", "it_IT", "es_ES", "nl_NL", "pl_PL", "sv_SE", "pt_BR",
                   "en_IE", "da_DK", "fi_FI", "cs_CZ", "en_IN"],
           "test": ["en_US", "tr_TR", "ro_RO", "hu_HU", "hr_HR", "no_NO", "lt_LT", "sk_SK", "en_AU",
                    "es_MX", "fr_CA", "de_AT", "pt_PT", "sl_SI"],
           "fresh": ["en_CA", "de_CH", "fr_CH", "it_IT", "es_AR", "es_CL", "pl_PL", "cs_CZ", "nl_BE",
                     "da_DK", "fi_FI", "sv_SE", "lv_LV", "et_EE"]}[SPLIT]
rng = random.Random(SEED)
fakers = {loc: Faker(loc) for loc in LOCALES}
for i, f in enumerate(fakers.values()):
    f.seed_instance(SEED + i)
us = Faker("en_US")
us.seed_instance(SEED + 99)

CONDITIONS = ["type 2 diabetes", "asthma", "hypertension", "migraines", "depression",
              "celiac disease", "epilepsy", "rheumatoid arthritis", "psoriasis", "anxiety",
              "high blood pressure", "sleep apnea", "osteoporosis", "hypothyroidism"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]


def f():
    return fakers[rng.choice(LOCALES)]


def name():
    g = f()
    return f"{g.first_name()} {g.last_name()}"


def date():
    y, m, d = rng.randint(2024, 2027), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{y}-{m:02d}-{d:02d}", f"{MONTHS[m - 1]} {d}, {y}", f"{d} {MONTHS[m - 1]} {y}",
                       f"{m:02d}/{d:02d}/{y}"])


def dob():
    y, m, d = rng.randint(1940, 2005), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{y}-{m:02d}-{d:02d}", f"{MONTHS[m - 1]} {d}, {y}"])


def phone():
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(1000, 9999)
    return rng.choice([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"+1 {a} {b} {c}",
                       f"+44 20 {rng.randint(7000, 8999)} {rng.randint(1000, 9999)}",
                       f"+49 30 {rng.randint(1000000, 99999999)}",
                       f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}"])


def card():
    n = us.credit_card_number(card_type=rng.choice(["visa16", "mastercard", "amex", "discover"]))
    if rng.random() < 0.5 and len(n) == 16:
        n = " ".join(n[i:i + 4] for i in range(0, 16, 4))
    return n


def iban():
    locs = {"dev": ["de_DE", "fr_FR", "nl_NL", "es_ES", "it_IT", "en_GB"],
            "test": ["de_AT", "pt_PT", "no_NO", "tr_TR", "ro_RO"],
            "fresh": ["de_CH", "nl_BE", "pl_PL", "fi_FI", "it_IT"]}[SPLIT]
    g = fakers[rng.choice(locs)]
    v = g.iban()
    if rng.random() < 0.5:
        v = " ".join(v[i:i + 4] for i in range(0, len(v), 4))
    return v


def address():
    return (f"{us.building_number()} {us.street_name()}" + rng.choice(["", f", Apt {rng.randint(1, 40)}"])
            + f", {us.city()}, {us.state_abbr()} {us.zipcode()}")


def town():
    # Locales whose town lists are real places and whose draws follow the seed.
    towns = {"dev": ["de_DE", "nl_NL", "pl_PL", "es_ES", "sv_SE"], "test": ["de_AT", "pt_PT", "hu_HU", "sk_SK"],
             "fresh": ["pl_PL", "cs_CZ", "nl_BE", "it_IT"]}[SPLIT]
    return fakers[rng.choice(towns)].city()


def org():
    g = f()
    return f"{g.last_name()} {rng.choice(['GmbH', 'Ltd', 'Inc', 'LLC', 'Consulting', 'Bank', 'Group'])}"


def email(person):
    first, last = person.split(" ", 1)
    clean = lambda s: "".join(c for c in s.lower() if c.isalpha())
    return f"{clean(first)}.{clean(last)}@{rng.choice(['gmail.com', 'outlook.com', 'proton.me', 'web.de'])}"


# (template id, needs the PII in the reply, template with {slots})
TEMPLATES = [
    ("email_contract", True, "Draft a short email to {person} ({email}) about the contract due {date}."),
    ("thanks", True, "Write a two-sentence thank-you note to my colleague {person}."),
    ("voicemail", True, "My name is {person} and my number is {phone}. Write a one-line voicemail greeting for me."),
    ("patient", False, "Patient {person}, MRN {mrn}, born {dob}, has {condition}. List three questions for the next visit."),
    ("payment", False, "Is this card number formatted correctly: {card}? And this IBAN: {iban}?"),
    ("server", False, "Our server at {ip} rejects the login at {url}. What should I check first?"),
    ("letter", True, "Write a letter to {person} at {address} confirming the appointment on {date}."),
    ("policy", True, "{person} from {org} asked about policy {policy}. Draft a polite reply to {person}."),
    ("meeting", True, "Remind {person} to call {phone} before {date}."),
    ("ssn", False, "My SSN is {ssn}. Which tax form does a freelancer use?"),
    ("town", True, "Write an invitation for {person} to visit us in {town} next summer."),
    ("health", False, "I was diagnosed with {condition}. What everyday changes usually help?"),
    ("capital", False, "What is the capital of France?"),
    ("photosynthesis", False, "Explain photosynthesis in one paragraph."),
]
if SPLIT != "dev":
    TEMPLATES = [
        ("dm", True, "hey, can you text {first} and say the party moved to {date}? thx"),
        ("signoff", True, "Sign this note as {person} from {org}: 'Thanks for the quote, we accept.'"),
        ("travel", True, "Plan a weekend in {town} for {person} and me with one museum and a good bakery."),
        ("hr", False, "Employee {person} (employee ID {emp}) reported {condition}; which accommodations are common?"),
        ("wire", False, "Please wire 400 EUR to {person}, IBAN {iban}, before {date}."),
        ("support", True, "Customer {person} says order {order} never arrived at {address}. Write an apology."),
        ("tech_bait", False, "How do I configure Kubernetes Ingress with Let's Encrypt on Ubuntu Server 24.04?"),
        ("book_bait", False, "Summarise Pride and Prejudice by Jane Austen in three sentences."),
        ("meeting_bait", False, "Move the Quarterly Business Review to Thursday and update the Project Phoenix agenda."),
        ("intro", True, "Introduce me to {person2} at the conference; mention that {person} recommended the talk."),
        ("ring", True, "Ring {person} on {phone} and ask about the invoice from {org}."),
        ("kyc", False, "{person} was born on {dob} and lives at {address}. Is this enough to open a bank account?"),
        ("card_help", False, "My card {card} was declined at {ip}; my e-mail is {email}. What now?"),
        ("ssn_form", False, "Fill in: name {person}, SSN {ssn}, phone {phone}."),
    ]
KIND = {"person": "person", "email": "email", "date": "date", "phone": "phone", "mrn": "account_number",
        "dob": "date", "condition": "health", "card": "card_number", "iban": "iban", "ip": "ip_address",
        "url": "url_credentials", "address": "address", "org": "organization", "policy": "account_number",
        "ssn": "ssn", "town": "location", "first": "person", "person2": "person", "emp": "account_number",
        "order": "account_number"}


def fill(template):
    person = name()
    values = {
        "person": person, "email": email(person), "date": date(), "phone": phone(),
        "mrn": str(rng.randint(10000000, 99999999)), "dob": dob(), "condition": rng.choice(CONDITIONS),
        "card": card(), "iban": iban(),
        "ip": us.ipv4_public() if rng.random() < 0.7 else us.ipv6(),
        "url": f"https://{us.user_name()}:{us.password(length=10, special_chars=False)}@{us.domain_name()}/login",
        "address": address(), "org": org(), "policy": f"{rng.choice(['PX', 'HK', 'AB'])}-{rng.randint(100000, 999999)}",
        "ssn": us.ssn(), "town": town(),
    }
    if SPLIT != "dev":  # extra draws only here, so the dev split stays as committed
        values.update({"first": person.split(" ")[0], "person2": name(), "emp": f"E{rng.randint(10000, 99999)}",
                       "order": f"{rng.randint(100, 999)}-{rng.randint(1000000, 9999999)}"})
    text, spans, i = "", [], 0
    while i < len(template):
        j = template.find("{", i)
        if j < 0:
            text += template[i:]
            break
        text += template[i:j]
        k = template.index("}", j)
        slot = template[j + 1:k]
        v = values[slot]
        start = len(text.encode())
        text += v
        spans.append({"start": start, "end": len(text.encode()), "kind": KIND[slot], "text": v})
        i = k + 1
    return text, spans


for n in range(N):
    tid, needs, template = TEMPLATES[n % len(TEMPLATES)]
    text, spans = fill(template)
    print(json.dumps({"id": n, "template": tid, "needs_pii": needs,
                      "messages": [{"role": "user", "content": text}], "spans": spans}, ensure_ascii=False))
