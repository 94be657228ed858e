#!/usr/bin/env node
/* gen-tokenizer-cases.js: the expected ids of the tokenizer tests, computed by Hugging Face
 * tokenizers itself (the Rust library, through its Node binding), so that every expectation in
 * tests/data/tokenizer is what HF gives, not what we believe it gives.
 *
 * Needs the network once, for npm, and never at build or test time:
 *   d=$(mktemp -d) && (cd "$d" && npm install @anush008/tokenizers@0.6.0 @huggingface/jinja@0.5.1)
 *   NODE_PATH="$d/node_modules" node scripts/gen-tokenizer-cases.js
 * rewrites, from models/deepseek-v3/ and tests/data/tokenizer/texts/*.txt:
 *   texts.jsonl           {"file", "ids"}: each text file encoded whole
 *   unicode_cases.jsonl   {"name", "text", "ids"}: edge cases listed below
 *   random_cases.jsonl    {"text", "ids"}: random multi-script strings, fixed seed
 *   decode_cases.jsonl    {"ids", "text"}: random id sequences (broken UTF-8 included) decoded
 *   chat_cases.jsonl      {"name", "messages", "add_generation_prompt", "text", "ids"}: the
 *                         chat_template of tokenizer_config.json rendered by @huggingface/jinja
 *   tiny_*.json and tiny_*_cases.jsonl: small tokenizers in the Llama-3, GPT-2 and Split-string
 *                         styles (built here from DeepSeek-V3's first merges) with their cases
 * @anush008/tokenizers 0.6.0 wraps tokenizers 0.22.2 (Rust, Oniguruma regexes); it encodes with
 * addSpecialTokens=false, as `darkhorse tokenize` does.
 *
 * Parity check against our build on many more random strings (not written anywhere):
 *   NODE_PATH=... node scripts/gen-tokenizer-cases.js --parity 20000 --darkhorse build/cli/darkhorse
 *       [--seed S] [--tokenizer FILE]
 * pipes the strings through `darkhorse tokenize --jsonl` and reports every difference;
 *   NODE_PATH=... node scripts/gen-tokenizer-cases.js --parity-codepoints --darkhorse BIN
 * does the same for every Unicode scalar value in a few contexts (about 30 s).
 *
 * The Unicode tables (core/tok_unicode.c) come from the same oracle:
 *   NODE_PATH=... node --max-old-space-size=8000 scripts/gen-tokenizer-cases.js --unicode-tables
 * asks HF's regex engine, for each general category, which code points \p{Xx} matches (a Split
 * pre-tokenizer with behaviour Removed over a string of every scalar value), checks that each
 * code point lands in exactly one category, and writes the runs. The Oniguruma bundled in HF
 * tokenizers 0.22.2 has Unicode 16.0 tables (16.0 characters match, 17.0 ones do not); Debian's
 * libonig 6.9.8 has Unicode 14.0 ones, so tokenizer.c replaces \p{..} in patterns with these
 * ranges. */
'use strict';
const fs = require('fs');
const path = require('path');
const {spawnSync} = require('child_process');
const {Tokenizer} = require('@anush008/tokenizers');

const ROOT = path.resolve(__dirname, '..');
const DATA = path.join(ROOT, 'tests/data/tokenizer');
const DSV3 = path.join(ROOT, 'models/deepseek-v3/tokenizer.json');
const DSV3_CONFIG = path.join(ROOT, 'models/deepseek-v3/tokenizer_config.json');

/* ---- deterministic randomness (mulberry32) ---- */
function rng(seed) {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6D2B79F5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}
const span = (lo, hi) => ({lo, hi});
const POOLS = [ // [weight, code point ranges or literal strings]
    [10, ['abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ']],
    [4, ['0123456789']],
    [5, ['!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~']],
    [6, [[' ', ' ', ' ', '  ', '\t', '\n', '\r\n', '\r', '\n\n', '\u00a0', '\u3000', '\u2028',
          '\u0085', '\u180e', '\u200b', '\u2009', '\u000b', '\u000c']]],
    [3, [span(0xC0, 0x17F)]],                                     // Latin-1, Latin Extended-A
    [2, [span(0x300, 0x36F)]],                                    // combining marks
    [2, [span(0x391, 0x3C9)]], [3, [span(0x410, 0x44F)]],         // Greek, Cyrillic
    [2, [span(0x621, 0x64A), span(0x64B, 0x652)]],                // Arabic and its marks
    [1, [span(0x5D0, 0x5EA)]],                                    // Hebrew
    [2, [span(0x905, 0x939), span(0x93E, 0x94D)]],                // Devanagari, vowel signs
    [2, [span(0xE01, 0xE3A), span(0xE40, 0xE4E)]],                // Thai
    [5, [span(0x4E00, 0x9FFF)]],                                  // CJK (beyond U+9FA5 too)
    [3, [span(0x3040, 0x30FF)]],                                  // kana
    [2, [span(0xAC00, 0xD7A3)]],                                  // Hangul
    [1, [span(0xFF01, 0xFF5E)]],                                  // fullwidth forms
    [2, [span(0x660, 0x669), span(0x6F0, 0x6F9), span(0x966, 0x96F), span(0xE50, 0xE59),
         span(0xFF10, 0xFF19), span(0x2460, 0x2473), span(0x2160, 0x216F), span(0x1D7CE, 0x1D7FF),
         '\u00b2\u00b3\u00b9\u00bc\u00bd\u00be']],                // digits and numbers of many scripts
    [2, [span(0x2190, 0x22FF), span(0x20A0, 0x20BF), span(0x2500, 0x257F)]], // symbols
    [3, [span(0x1F300, 0x1F64F), span(0x1F900, 0x1F9FF),
         [String.fromCodePoint(0x1F468, 0x200D, 0x1F469, 0x200D, 0x1F467), '\u{1F44D}\u{1F3FD}',
          '\u{1F1FA}\u{1F1F8}', '\u{1F3F3}\uFE0F\u200D\u{1F308}', '1\uFE0F\u20E3', '\u2764\uFE0F']]],
    [2, [span(0x10000, 0x1FFFF), span(0x20000, 0x2A6DF), span(0x1D400, 0x1D7CB)]], // astral
    [1, [span(0xE000, 0xF8FF), span(0xF0000, 0xFFFFD)]],          // private use
    [2, [span(0, 0x10FFFF)]],                                     // anything (surrogates skipped)
    [1, [['\ufffd', '\ufeff', '\u0000', '\u0001', '\u001f', '\u007f', '\u0080', '\u009f']]],
    [2, [["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", '\u2019s', "n't"]]],
    [2, [['<｜User｜>', '<｜Assistant｜>', '<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>',
          '<|EOT|>', '<｜User', '｜>', '<｜fim▁hole｜>', '<｜place▁holder▁no▁42｜>', '<', '▁',
          '<|begin_of_text|>', '<|eot_id|>', '<tool>', '<|endoftext|>']]],
];
const TOTAL_WEIGHT = POOLS.reduce((s, p) => s + p[0], 0);

function pick(r, pool) {
    const parts = pool[1], part = parts[Math.floor(r() * parts.length)];
    if (Array.isArray(part)) return part[Math.floor(r() * part.length)];
    if (typeof part === 'string') return [...part][Math.floor(r() * [...part].length)];
    for (;;) {
        const cp = part.lo + Math.floor(r() * (part.hi - part.lo + 1));
        if (cp < 0xD800 || cp > 0xDFFF) return String.fromCodePoint(cp);
    }
}

function randomString(r, maxRuns) {
    let s = '';
    const runs = 1 + Math.floor(r() * maxRuns);
    for (let i = 0; i < runs; i++) {
        let w = r() * TOTAL_WEIGHT, pool = POOLS[0];
        for (const p of POOLS) { if ((w -= p[0]) < 0) { pool = p; break; } }
        const len = 1 + Math.floor(r() * (r() < 0.1 ? 80 : 10));
        for (let j = 0; j < len; j++) s += pick(r, pool);
        if (r() < 0.4) s += ' ';
    }
    return s;
}

/* ---- hand-picked edge cases ---- */
const UNICODE_CASES = [
    ['combining acute', 'e\u0301te\u0301 cafe\u0301'],
    ['stacked combining marks', 'a\u0300\u0301\u0302\u0303\u0304 Z\u0351\u0352\u0353\u0354\u0355'],
    ['combining mark first', '\u0301\u0302abc \u0308'],
    ['hangul jamo', '\u1100\u1161\u11a8\u1102\u1165 \ud55c\uad6d\uc5b4'],
    ['zwj family', '\u{1F468}\u200D\u{1F469}\u200D\u{1F467}\u200D\u{1F466} family'],
    ['zwj profession and skin tone', '\u{1F469}\u{1F3FD}\u200D\u{1F4BB} \u{1F44D}\u{1F3FF}\u{1F44D}\u{1F3FB}'],
    ['flags', '\u{1F1FA}\u{1F1F8}\u{1F1EB}\u{1F1F7}\u{1F1EF}\u{1F1F5} \u{1F3F3}\uFE0F\u200D\u{1F308}'],
    ['keycaps', '1\uFE0F\u20E3#\uFE0F\u20E3 *\u20E3'],
    ['thai without spaces', 'ภาษาไทยเป็นภาษาที่ไม่มีการเว้นวรรคระหว่างคำ'],
    ['japanese without spaces', '日本語のテキストはスペースなしで書かれます。カタカナとひらがなと漢字。'],
    ['chinese without spaces', '中文文本通常不使用空格分隔词语，这是一个测试。'],
    ['cjk past U+9FA5 and ext A/B', '龦龻鿿 㐀㐁 𠀀𠀁𪘀 漢字龥龦'],
    ['halfwidth katakana', 'ｶﾀｶﾅ ﾃｽﾄ'],
    ['arabic-indic digits', '٠١٢٣٤٥٦٧٨٩ ۰۱۲۳۴۵۶۷۸۹'],
    ['devanagari and thai digits', '०१२३४५६७८९ ๐๑๒๓๔๕๖๗๘๙'],
    ['fullwidth and circled digits', '０１２３４５６７８９ ①②③⑳'],
    ['super/subscripts, fractions, roman', 'x²+y³=z¹ ½¾¼ ⅠⅡⅢⅫ ₀₁₂'],
    ['math alphanumerics', '𝐀𝐁𝐂 𝑥𝑦𝑧 𝟎𝟏𝟐𝟑𝟒𝟓'],
    ['long digit run', '12345678901234567890 3.14159265358979323846'],
    ['crlf mixes', 'a\r\nb\n\rc\r\r\n\nd\r\n\r\n  e\n\t\n'],
    ['only whitespace', '   \n   \t\t \r\n '],
    ['trailing spaces', 'word    '],
    ['leading spaces', '     word'],
    ['many newlines', '\n\n\n\n\n\nx\n\n'],
    ['unicode spaces', 'a\u00a0b\u2009c\u3000d\u2028e\u2029f\u0085g\u180eh\u200bi\u202fj\u205fk'],
    ['replacement char and bom', '\ufffd\ufffd \ufeffBOM \ufffdx'],
    ['control characters', '\u0000\u0001\u001f\u007f\u0080\u009f tab\there'],
    ['private use', '\ue000\uf8ff \u{F0000}\u{10FFFD}'],
    ['astral letters and emoji', '𐍈𐌰𐌹 😀😃😄 𓀀𓀁 \u{1F9D1}\u200D\u{1F91D}\u200D\u{1F9D1}'],
    ['noncharacters', '\ufdd0\ufffe\uffff\u{1FFFE}'],
    ['new in unicode 15 and 16', ' \u{1FA77} \u{1FAE8}x \u{1FA89}. \u{1CD8A}a \u{31350}\u{2EBF0} \u{16100}'],
    ['new in unicode 17 (unassigned for HF)', ' \u{1F6D8} \u{1FAEA}x'],
    ['special tokens', '<｜User｜>hi<｜Assistant｜>hello<｜end▁of▁sentence｜>'],
    ['repeated bos', '<｜begin▁of▁sentence｜><｜begin▁of▁sentence｜>'],
    ['partial special tokens', '<｜User <｜User｜ ｜User｜> <<｜User｜>> <｜Us<｜User｜>'],
    ['eot and placeholders', '<|EOT|><｜place▁holder▁no▁799｜><｜fim▁hole｜>x<｜fim▁end｜>'],
    ['special token inside a word', 'abc<｜Assistant｜>def 123<|EOT|>456'],
    ['apostrophes', "don't I'll we've they're she'd I'm it's DON'T WE'LL o'clock rock'n'roll"],
    ['curly apostrophes', 'don’t I’ll ‘quoted’ “double”'],
    ['long letter run', 'a'.repeat(300)],
    ['long mixed word', 'Pneumonoultramicroscopicsilicovolcanoconiosis'.repeat(4)],
    ['base64 blob', 'TWFueSBoYW5kcyBtYWtlIGxpZ2h0IHdvcmsuIFRoaXMgaXMgYSBsb25nZXIgYmFzZTY0IGJsb2IgZm9yIHRoZSB0ZXN0cw=='],
    ['url', 'https://example.com/a/b/c?query=1&other=two#fragment-part_3'],
    ['code', 'for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n'],
    ['python', 'def f(x):\n    """Doc."""\n    return {"k": [1, 2, 3]}\n\n\nclass A:\n    pass\n'],
    ['punctuation runs', '!!!???... --- === +++ ***\n\n;;;'],
    ['mixed scripts', 'Hello世界123abc Привет мир مرحبا שלום नमस्ते 안녕하세요 Γειά'],
    ['prices', 'price: $1,234.56 (≈ €1.100,50) ¥1000 £5'],
    ['math', '∀x∈ℝ: x²≥0 ⇒ √(x²)=|x| ∑ᵢ aᵢ ≤ ∞'],
    ['email and handles', 'user.name+tag@example.co.uk @handle #hashtag'],
    ['letters with marks and digits', 'a1b2c3 é9 ñ0 ü1'],
    ['ascii table', Array.from({length: 95}, (_, i) => String.fromCharCode(32 + i)).join('')],
    ['latin-1 table', Array.from({length: 96}, (_, i) => String.fromCharCode(160 + i)).join('')],
];

/* ---- helpers ---- */
async function encode(tok, text) {
    const e = await tok.encode(text, null, {addSpecialTokens: false});
    return Array.from(e.getIds());
}
function writeJsonl(file, rows) {
    fs.writeFileSync(path.join(DATA, file), rows.map(r => JSON.stringify(r)).join('\n') + '\n');
    console.error(`wrote ${file}: ${rows.length} rows`);
}

/* ---- tiny tokenizers: DeepSeek-V3's first merges over the 256 byte characters ---- */
const LLAMA3_RE = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

function byteChars() {
    const bs = [];
    for (let b = 33; b <= 126; b++) bs.push(b);
    for (let b = 161; b <= 172; b++) bs.push(b);
    for (let b = 174; b <= 255; b++) bs.push(b);
    const cs = bs.slice();
    let n = 0;
    for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
    const m = new Array(256);
    bs.forEach((b, i) => { m[b] = String.fromCodePoint(cs[i]); });
    return m;
}

function tinyModel(nMerges) {
    const ds = JSON.parse(fs.readFileSync(DSV3, 'utf8'));
    const vocab = {};
    byteChars().forEach((c, b) => { vocab[c] = b; });
    const merges = [];
    for (const m of ds.model.merges) {
        if (merges.length === nMerges) break;
        const [a, b] = typeof m === 'string' ? m.split(' ') : m;
        if (!(a in vocab) || !(b in vocab)) continue;
        merges.push([a, b]);
        if (!((a + b) in vocab)) vocab[a + b] = Object.keys(vocab).length;
    }
    // reachable only when the whole word is looked up (ignore_merges)
    for (const w of ['unreachableword', 'Ġzyzzyva']) vocab[w] = Object.keys(vocab).length;
    return {vocab, merges};
}

function added(list, base) {
    return list.map(([content, special, normalized], i) => ({
        id: base + i, content, single_word: false, lstrip: false, rstrip: false, normalized, special,
    }));
}

function tinyTokenizers() {
    const {vocab, merges} = tinyModel(1000);
    const n = Object.keys(vocab).length;
    const bpe = (extra, m) => Object.assign({type: 'BPE', dropout: null, unk_token: null,
        continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false,
        byte_fallback: false}, extra, {vocab, merges: m});
    const decoder = {type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true};
    return {
        'tiny_llama3.json': {
            version: '1.0', truncation: null, padding: null,
            added_tokens: added([['<|begin_of_text|>', true, false], ['<|eot_id|>', true, false],
                                 ['<tool>', false, true]], n),
            normalizer: null,
            pre_tokenizer: {type: 'Sequence', pretokenizers: [
                {type: 'Split', pattern: {Regex: LLAMA3_RE}, behavior: 'Isolated', invert: false},
                {type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false}]},
            post_processor: {type: 'Sequence', processors: [
                {type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true},
                {type: 'TemplateProcessing',
                 single: [{SpecialToken: {id: '<|begin_of_text|>', type_id: 0}}, {Sequence: {id: 'A', type_id: 0}}],
                 pair: [{SpecialToken: {id: '<|begin_of_text|>', type_id: 0}}, {Sequence: {id: 'A', type_id: 0}},
                        {SpecialToken: {id: '<|begin_of_text|>', type_id: 1}}, {Sequence: {id: 'B', type_id: 1}}],
                 special_tokens: {'<|begin_of_text|>': {id: '<|begin_of_text|>', ids: [n], tokens: ['<|begin_of_text|>']}}}]},
            decoder,
            model: bpe({ignore_merges: true}, merges),
        },
        'tiny_gpt2.json': {
            version: '1.0', truncation: null, padding: null,
            added_tokens: added([['<|endoftext|>', true, false]], n),
            normalizer: null,
            pre_tokenizer: {type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true},
            post_processor: {type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true},
            decoder,
            model: bpe({}, ['#version: 0.2'].concat(merges.map(([a, b]) => a + ' ' + b))),
        },
        'tiny_split.json': {
            version: '1.0', truncation: null, padding: null,
            added_tokens: [],
            normalizer: {type: 'Sequence', normalizers: []},
            pre_tokenizer: {type: 'Sequence', pretokenizers: [
                {type: 'Split', pattern: {String: '. '}, behavior: 'Isolated', invert: true},
                {type: 'Split', pattern: {Regex: '(?=[A-Z])'}, behavior: 'Isolated', invert: false},
                {type: 'Split', pattern: {Regex: 'x*'}, behavior: 'Isolated', invert: false},
                {type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true}]},
            post_processor: null,
            decoder,
            model: bpe({}, merges.map(([a, b]) => a + ' ' + b)),
        },
    };
}

/* ---- the data files ---- */
async function generate() {
    const tok = Tokenizer.fromFile(DSV3);
    const texts = fs.readdirSync(path.join(DATA, 'texts')).filter(f => f.endsWith('.txt')).sort();
    const textRows = [];
    for (const f of texts)
        textRows.push({file: f, ids: await encode(tok, fs.readFileSync(path.join(DATA, 'texts', f), 'utf8'))});
    writeJsonl('texts.jsonl', textRows);

    const uni = [];
    for (const [name, text] of UNICODE_CASES) uni.push({name, text, ids: await encode(tok, text)});
    writeJsonl('unicode_cases.jsonl', uni);

    const r = rng(20250101), rand = [];
    for (let i = 0; i < 200; i++) {
        const text = randomString(r, 8);
        rand.push({text, ids: await encode(tok, text)});
    }
    writeJsonl('random_cases.jsonl', rand);

    // ids: random vocab ids, lone bytes (0x80..0xFF make broken UTF-8), added tokens, unknown ids
    const bytes = byteChars().map(c => tok.tokenToId(c));
    const dec = [];
    for (let i = 0; i < 200; i++) {
        const ids = [], len = 1 + Math.floor(r() * 12);
        for (let j = 0; j < len; j++) {
            const k = r();
            ids.push(k < 0.4 ? Math.floor(r() * 128000) : k < 0.8 ? bytes[Math.floor(r() * 256)]
                     : k < 0.95 ? 128000 + Math.floor(r() * 815) : 128815 + Math.floor(r() * 500));
        }
        dec.push({ids, text: await tok.decode(ids, false)});
    }
    writeJsonl('decode_cases.jsonl', dec);

    const {Template} = require('@huggingface/jinja');
    const cfg = JSON.parse(fs.readFileSync(DSV3_CONFIG, 'utf8'));
    const tmpl = new Template(cfg.chat_template);
    const chats = [
        ['system and user', [{role: 'system', content: 'You are a helpful assistant.'},
                             {role: 'user', content: 'Hello!'}], true],
        ['user only, no generation prompt', [{role: 'user', content: 'What is 2+2?'}], false],
        ['multi-turn', [{role: 'system', content: 'Be brief.'}, {role: 'user', content: 'Hi'},
                        {role: 'assistant', content: 'Hello! How can I help?'},
                        {role: 'user', content: '讲个笑话。'}], true],
        ['two system messages anywhere', [{role: 'system', content: 'S1'}, {role: 'user', content: 'u'},
                                          {role: 'system', content: 'S2'}, {role: 'assistant', content: 'a'}], true],
        ['no messages', [], true],
        ['empty contents', [{role: 'system', content: ''}, {role: 'user', content: ''}], true],
        ['special tokens in content', [{role: 'user', content: 'say <｜Assistant｜> and\n\n<|EOT|>'}], false],
    ];
    const chatRows = [];
    for (const [name, messages, agp] of chats) {
        const text = tmpl.render({messages, add_generation_prompt: agp, bos_token: cfg.bos_token.content});
        chatRows.push({name, messages, add_generation_prompt: agp, text, ids: await encode(tok, text)});
    }
    writeJsonl('chat_cases.jsonl', chatRows);

    // tiny tokenizers: the edge cases, plus random strings
    for (const [file, json] of Object.entries(tinyTokenizers())) {
        fs.writeFileSync(path.join(DATA, file), JSON.stringify(json));
        const t = Tokenizer.fromFile(path.join(DATA, file)), rows = [];
        const extra = ['unreachableword', ' zyzzyva', 'zyzzyva', 'HelloWorld FooBar. Baz. ',
                       'xxAxxBxx', 'x', 'DON\'T we\'LL', '<|begin_of_text|>hi<tool>x<|eot_id|>'];
        for (const [, text] of UNICODE_CASES) rows.push({text, ids: await encode(t, text)});
        for (const text of extra) rows.push({text, ids: await encode(t, text)});
        const rt = rng(7);
        for (let i = 0; i < 30; i++) {
            const text = randomString(rt, 6);
            rows.push({text, ids: await encode(t, text)});
        }
        writeJsonl(file.replace('.json', '_cases.jsonl'), rows);
    }
}

/* ---- parity against darkhorse ---- */
async function parity(n, bin, seed, tokPath) {
    const tok = Tokenizer.fromFile(tokPath);
    const r = rng(seed), texts = [];
    for (let i = 0; i < n; i++) texts.push(randomString(r, i % 50 === 0 ? 200 : 12));
    const input = texts.map(text => JSON.stringify({text})).join('\n') + '\n';
    const t0 = Date.now();
    const res = spawnSync(bin, ['tokenize', '--tokenizer', tokPath, '--jsonl'],
                          {input, maxBuffer: 1 << 30, encoding: 'utf8'});
    if (res.status !== 0) throw new Error(`${bin} failed: ${res.stderr}`);
    const t1 = Date.now();
    const out = res.stdout.trimEnd().split('\n');
    let bad = 0, bytes = 0;
    for (let i = 0; i < n; i++) {
        bytes += Buffer.byteLength(texts[i]);
        const want = await encode(tok, texts[i]), got = JSON.parse(out[i]);
        if (JSON.stringify(got.ids) !== JSON.stringify(want)) {
            if (++bad <= 10) console.log('MISMATCH', JSON.stringify(texts[i]), '\n  hf ', JSON.stringify(want), '\n  got', out[i]);
        }
    }
    console.log(`parity: ${n} random strings (${bytes} bytes, seed ${seed}) with ${path.basename(tokPath)}: ` +
                `${bad} mismatches; darkhorse took ${t1 - t0} ms`);
    process.exitCode = bad ? 1 : 0;
}

/* ---- Unicode general categories as HF's Oniguruma sees them ---- */
const GC_NAMES = ['Lu', 'Ll', 'Lt', 'Lm', 'Lo', 'Mn', 'Mc', 'Me', 'Nd', 'Nl', 'No', 'Pc', 'Pd', 'Ps',
                  'Pe', 'Pi', 'Pf', 'Po', 'Sm', 'Sc', 'Sk', 'So', 'Zs', 'Zl', 'Zp', 'Cc', 'Cf', 'Cs',
                  'Co', 'Cn'];

function scalarValues() {
    const cps = [];
    for (let c = 0; c <= 0x10FFFF; c++) if (c < 0xD800 || c > 0xDFFF) cps.push(c);
    return cps;
}

function unicodeTables() {
    const base = JSON.parse(fs.readFileSync(path.join(DATA, 'tiny_split.json'), 'utf8'));
    const cps = scalarValues(), all = cps.map(c => String.fromCodePoint(c)).join('');
    const tmp = path.join(require('os').tmpdir(), `gc-probe-${process.pid}.json`);
    const gcOf = new Int8Array(cps.length).fill(-1);
    GC_NAMES.forEach((g, k) => {
        if (g === 'Cs') return; // surrogates are not scalar values: never in valid UTF-8
        const j = Object.assign({}, base, {pre_tokenizer: {type: 'Split', pattern: {Regex: `\\p{${g}}`},
                                                          behavior: 'Removed', invert: false}});
        fs.writeFileSync(tmp, JSON.stringify(j));
        const hit = new Uint8Array(cps.length).fill(1);
        for (const [, [s, e]] of Tokenizer.fromFile(tmp).getPreTokenizer().preTokenizeString(all))
            for (let i = s; i < e; i++) hit[i] = 0;
        for (let i = 0; i < cps.length; i++) {
            if (!hit[i]) continue;
            if (gcOf[i] >= 0) throw new Error(`U+${cps[i].toString(16)} is both ${GC_NAMES[gcOf[i]]} and ${g}`);
            gcOf[i] = k;
        }
        console.error(`probed \\p{${g}}`);
    });
    fs.unlinkSync(tmp);
    const runs = [];
    let prev = -1;
    for (let i = 0; i < cps.length; i++) {
        if (gcOf[i] < 0) throw new Error(`U+${cps[i].toString(16)} is in no category`);
        if (cps[i] === 0xE000) { runs.push([0xD800, GC_NAMES.indexOf('Cs')]); prev = -1; }
        if (gcOf[i] !== prev) runs.push([cps[i], gcOf[i]]);
        prev = gcOf[i];
    }
    let lines = '';
    for (let i = 0; i < runs.length; i += 6)
        lines += '    ' + runs.slice(i, i + 6).map(([c, g]) => `{0x${c.toString(16).toUpperCase()}, ${g}}`).join(', ') + ',\n';
    const out = `/* tok_unicode.c: generated by scripts/gen-tokenizer-cases.js --unicode-tables; do not edit.
 *
 * The Unicode general category of every code point as the regex engine of Hugging Face
 * tokenizers 0.22.2 matches \\p{Xx} (its bundled Oniguruma has Unicode 16.0 tables): probed
 * from HF itself, one category at a time, each code point found in exactly one. Debian's
 * libonig has older tables; tokenizer.c writes these ranges into the patterns instead. */
#include "tok_unicode.h"

const char *const tok_gc_names[TOK_GC_COUNT] = {
${[0, 10, 20].map(i => '    ' + GC_NAMES.slice(i, i + 10).map(g => `"${g}"`).join(', ') + ',').join('\n')}
};

const tok_gc_run tok_gc_runs[] = {
${lines}};
const size_t tok_gc_n_runs = sizeof tok_gc_runs / sizeof tok_gc_runs[0];
`;
    fs.writeFileSync(path.join(ROOT, 'core/tok_unicode.c'), out);
    console.error(`wrote core/tok_unicode.c: ${runs.length} runs`);
}

/* Every scalar value alone and next to a space, a letter, a digit and itself. */
async function parityCodepoints(bin, tokPath) {
    const tok = Tokenizer.fromFile(tokPath), cps = scalarValues();
    const texts = [];
    for (let i = 0; i < cps.length; i += 64) {
        let s = '';
        for (const c of cps.slice(i, i + 64)) {
            const ch = String.fromCodePoint(c);
            s += ` ${ch}a${ch}${ch}1 x${ch} `;
        }
        texts.push(s);
    }
    const input = texts.map(text => JSON.stringify({text})).join('\n') + '\n';
    const res = spawnSync(bin, ['tokenize', '--tokenizer', tokPath, '--jsonl'],
                          {input, maxBuffer: 1 << 30, encoding: 'utf8'});
    if (res.status !== 0) throw new Error(`${bin} failed: ${res.stderr}`);
    const out = res.stdout.trimEnd().split('\n');
    let bad = 0;
    for (let i = 0; i < texts.length; i++) {
        const want = await encode(tok, texts[i]);
        if (JSON.stringify(JSON.parse(out[i]).ids) !== JSON.stringify(want)) {
            if (++bad <= 10) console.log('MISMATCH in block starting at U+' + cps[i * 64].toString(16));
        }
    }
    console.log(`parity: all ${cps.length} scalar values in ${texts.length} strings with ` +
                `${path.basename(tokPath)}: ${bad} mismatching strings`);
    process.exitCode = bad ? 1 : 0;
}

const args = process.argv.slice(2);
const opt = (name, def) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : def; };
if (args.includes('--unicode-tables')) {
    unicodeTables();
} else if (args.includes('--parity-codepoints')) {
    parityCodepoints(opt('--darkhorse', path.join(ROOT, 'build/cli/darkhorse')), opt('--tokenizer', DSV3))
        .catch(e => { console.error(e); process.exit(1); });
} else if (args.includes('--parity')) {
    parity(parseInt(opt('--parity', '1000'), 10), opt('--darkhorse', path.join(ROOT, 'build/cli/darkhorse')),
           parseInt(opt('--seed', '12345'), 10), opt('--tokenizer', DSV3)).catch(e => { console.error(e); process.exit(1); });
} else {
    generate().catch(e => { console.error(e); process.exit(1); });
}
