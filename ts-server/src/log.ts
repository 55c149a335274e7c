// Structured logs: one JSON object per line on stderr. MUR_LOG sets the
// least severe level written (debug, info (default), warn, error) or
// silent.
export type Level = 'debug' | 'info' | 'warn' | 'error';

const ORDER: Record<string, number> = { debug: 0, info: 1, warn: 2, error: 3, silent: 4 };

export function log(level: Level, event: string, fields: Record<string, unknown> = {}): void {
  if (ORDER[level] < (ORDER[process.env.MUR_LOG ?? 'info'] ?? ORDER.info)) return;
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level, event, ...fields }) + '\n');
}
