import { join } from 'node:path';
import { ROOT } from '../../harness/processes.js';

export { ROOT, BIN } from '../../harness/processes.js';
export const FIXTURES = join(ROOT, 'test', 'fixtures');
