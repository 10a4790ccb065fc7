// Test seams of the upgrade (faults to inject): nothing in the shipped code sets them, only src/testkit/fault-entry.ts.
export interface UpgradeHooks {
  /** The binary to exec instead of node (a path that does not exist proves the old image resumes). */
  execPath?: string;
  /** The bridge's entry script instead of carry/bridge.js (the testkit's, which installs bridgeStarted). */
  bridgeEntry?: string;
  /** Runs in the bridge once it is non-dumpable, before it takes anything (a bridge that dies, or holds still). */
  bridgeStarted?: () => void;
  /**
   * Runs in the bridge with a batch's clients (`info.client`) while nobody relays them: a batch received, before it
   * is adopted ('adopt'), and a batch detached, before it is sent back ('return'). Holding still there widens the
   * window in which connections end while they are carried.
   */
  bridgeBatch?: (moment: 'adopt' | 'return', clients: string[]) => void;
  /** Runs just before execve, connections in the bridge (holding still here stands in for a new image slow to boot). */
  beforeExec?: () => void;
}

export const upgradeHooks: UpgradeHooks = {};
