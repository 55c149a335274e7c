// Structured logs: one JSON object per line on stderr. MUR_LOG=silent mutes them.
export type Level = 'debug' | 'info' | 'warn' | 'error';

export function log(level: Level, event: string, fields: Record<string, unknown> = {}): void {
  if (process.env.MUR_LOG === 'silent') return;
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level, event, ...fields }) + '\n');
}
