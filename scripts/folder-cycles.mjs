#!/usr/bin/env node
// Reads dependency-cruiser's JSON (stdin), collapses src/ modules to their top-level folder and fails on any folder cycle.
import { readFileSync } from 'node:fs';

/** Tests and the test kit sit above everything (nothing shipped imports them: a depcruise rule says so). */
const TEST = /^src\/testkit\/|\.(test|scenarios|ktls-test)\.ts$/;

/** The top-level folder of src/ a shipped module lies in, or null for tests and anything outside src/. */
export function folderOf(path) {
  if (TEST.test(path)) return null;
  const m = /^src\/([^/]+)\//.exec(path);
  return m ? m[1] : null;
}

/** Folder graph from cruised modules: folder -> set of folders it imports (self-edges left out). */
export function folderGraph(modules) {
  const graph = new Map();
  for (const mod of modules) {
    const from = folderOf(mod.source);
    if (!from) continue;
    if (!graph.has(from)) graph.set(from, new Set());
    for (const dep of mod.dependencies ?? []) {
      const to = folderOf(dep.resolved);
      if (to && to !== from) graph.get(from).add(to);
    }
  }
  return graph;
}

/** Strongly connected components with more than one folder (Tarjan), each sorted; these are the cycles. */
export function folderCycles(graph) {
  let index = 0;
  const idx = new Map(),
    low = new Map(),
    onStack = new Set(),
    stack = [],
    out = [];
  const visit = (v) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const scc = [];
      let w;
      do {
        w = stack.pop();
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1) out.push(scc.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!idx.has(v)) visit(v);
  return out;
}

/**
 * For a cycle, its folder edges with the file imports behind each: the edge with the fewest imports is usually the one
 * against the flow, so edges of up to 3 imports list them.
 */
function edgesWithin(modules, scc) {
  const inside = new Set(scc);
  const edges = new Map();
  for (const mod of modules) {
    const from = folderOf(mod.source);
    if (!inside.has(from)) continue;
    for (const dep of mod.dependencies ?? []) {
      const to = folderOf(dep.resolved);
      if (!to || to === from || !inside.has(to)) continue;
      const key = `${from} → ${to}`;
      if (!edges.has(key)) edges.set(key, []);
      edges.get(key).push(`${mod.source} → ${dep.resolved}`);
    }
  }
  const lines = [];
  for (const [key, files] of [...edges].sort((a, b) => a[1].length - b[1].length || a[0].localeCompare(b[0]))) {
    lines.push(`    ${key} (${files.length} import${files.length === 1 ? '' : 's'})`);
    if (files.length <= 3) for (const f of files) lines.push(`        ${f}`);
  }
  return lines;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const modules = JSON.parse(readFileSync(0, 'utf8')).modules;
  const cycles = folderCycles(folderGraph(modules));
  for (const scc of cycles) {
    console.error(`  error folder-cycle: src/{${scc.join(',')}} import each other:`);
    for (const line of edgesWithin(modules, scc)) console.error(line);
  }
  if (cycles.length) {
    console.error(`\nx ${cycles.length} cycle(s) between top-level folders of src/`);
    process.exit(1);
  }
  console.log(`✔ no cycle between the ${folderGraph(modules).size} top-level folders of src/`);
}
