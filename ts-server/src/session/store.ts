// Sessions by id. Closing a session (or the store) disposes every tensor it holds.
import { randomUUID } from 'crypto';
import { NotFound } from '../errors';
import type { ResolvedSpec } from '../registry';
import { Session, type ParamDeclaration } from './session';

export class SessionStore {
  private readonly sessions = new Map<string, Session>();

  create(spec: ResolvedSpec, params: ParamDeclaration[]): Session {
    const s = new Session(randomUUID(), spec, params);
    this.sessions.set(s.id, s);
    return s;
  }

  get(id: string): Session {
    const s = this.sessions.get(id);
    if (!s) throw new NotFound(`session '${id}' not found (never created, or closed)`);
    return s;
  }

  close(id: string): void {
    this.get(id).dispose();
    this.sessions.delete(id);
  }

  get size(): number {
    return this.sessions.size;
  }

  closeAll(): void {
    for (const s of this.sessions.values()) s.dispose();
    this.sessions.clear();
  }
}
