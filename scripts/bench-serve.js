// bench-serve.js URL [--levels 1,4,16,64] [--requests 16,32,64,128] [--prompt-tokens 64]
//                    [--max-tokens 32] [--key KEY] [--sampling darkhorse|openai]
// The load client of scripts/bench-serve.sh: for each concurrency level, that many clients send
// streamed /v1/completions requests back to back (prompts of exactly --prompt-tokens token ids,
// --max-tokens generated with ignore_eos, sampled as darkhorse generate does: temperature 0.8,
// top-p 0.95, top-k 40; or with --sampling openai as an OpenAI client's defaults leave it:
// temperature 1, no top-p or top-k, a softmax over the whole vocabulary for every token) until
// the level's request count is done, timing every chunk. Prints a markdown table to stdout: generated tokens per second over the level's wall
// time, time to first token and time per output token (per request: (last - first) / (n - 1)),
// p50 and p99 over the requests. Progress goes to stderr. Node 18+ (fetch), no packages.
'use strict';

const args = process.argv.slice(2);
const url = args[0];
const opt = (name, def) => {
  const i = args.indexOf('--' + name);
  return i > 0 ? args[i + 1] : def;
};
const levels = opt('levels', '1,4,16,64').split(',').map(Number);
const counts = opt('requests', '16,32,64,128').split(',').map(Number);
const promptTokens = Number(opt('prompt-tokens', 64));
const maxTokens = Number(opt('max-tokens', 32));
const key = opt('key', '');
const sampling = opt('sampling', 'darkhorse');
const drawWith = { darkhorse: { temperature: 0.8, top_p: 0.95, top_k: 40 }, openai: { temperature: 1 } }[sampling];
if (!url || counts.length !== levels.length || !drawWith) {
  console.error('usage: bench-serve.js URL [--levels 1,4,16,64] [--requests 16,32,64,128] [--sampling darkhorse|openai] ...');
  process.exit(2);
}

// a prompt of exactly promptTokens ids, different for every request (no shared prefix to cache)
function prompt(i) {
  return Array.from({ length: promptTokens }, (_, t) => 1000 + ((i * 7919 + t * 104729) % 100000));
}

async function one(i) {
  const t0 = performance.now();
  const res = await fetch(url + '/v1/completions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...(key ? { Authorization: 'Bearer ' + key } : {}) },
    body: JSON.stringify({ prompt: prompt(i), max_tokens: maxTokens, ...drawWith, seed: i, ignore_eos: true,
                           stream: true, stream_options: { include_usage: true } }),
  });
  if (res.status !== 200) throw new Error(`request ${i}: HTTP ${res.status}: ${await res.text()}`);
  const dec = new TextDecoder();
  let buf = '', first = 0, last = 0, tokens = 0, done = false;
  for await (const part of res.body) {
    const now = performance.now();
    buf += dec.decode(part, { stream: true });
    let k;
    while ((k = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, k);
      buf = buf.slice(k + 2);
      if (!ev.startsWith('data: ')) continue;
      const data = ev.slice(6);
      if (data === '[DONE]') { done = true; continue; }
      const ch = JSON.parse(data);
      if (ch.error) throw new Error(`request ${i}: ${ch.error.message}`);
      if (ch.choices.length && ch.choices[0].text) {
        if (!first) first = now;
        last = now;
      }
      if (ch.usage) tokens = ch.usage.completion_tokens;
    }
  }
  if (!done || !first) throw new Error(`request ${i}: the stream ended early`);
  return { ttft: (first - t0) / 1e3, tpot: tokens > 1 ? (last - first) / 1e3 / (tokens - 1) : 0, tokens };
}

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

async function level(c, n, base) {
  const out = [];
  let next = 0;
  const t0 = performance.now();
  const client = async () => {
    while (next < n) {
      const i = base + next++;
      out.push(await one(i));
    }
  };
  await Promise.all(Array.from({ length: c }, client));
  const wall = (performance.now() - t0) / 1e3;
  const tokens = out.reduce((a, r) => a + r.tokens, 0);
  return { c, n, wall, tps: tokens / wall, ttft: out.map((r) => r.ttft), tpot: out.map((r) => r.tpot) };
}

(async () => {
  const ms = (s) => (s * 1e3).toFixed(0);
  console.error('warming up (2 requests)');
  await level(1, 2, 1e6);
  const rows = [];
  let base = 0;
  for (let j = 0; j < levels.length; j++) {
    console.error(`concurrency ${levels[j]}: ${counts[j]} requests`);
    const r = await level(levels[j], counts[j], base);
    base += counts[j];
    console.error(`  ${r.wall.toFixed(1)} s, ${r.tps.toFixed(1)} generated tokens/s`);
    rows.push(r);
  }
  console.log('| concurrency | requests | wall s | generated tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.c} | ${r.n} | ${r.wall.toFixed(1)} | ${r.tps.toFixed(1)} | ${ms(pct(r.ttft, 50))} | ` +
                `${ms(pct(r.ttft, 99))} | ${ms(pct(r.tpot, 50))} | ${ms(pct(r.tpot, 99))} |`);
  }
})().catch((e) => {
  console.error(e.message || e);
  process.exit(1);
});
