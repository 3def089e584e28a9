//go:build race

package appliance

// raceEnabled: under the race detector some fault tests are left to the
// plain run, where they cost a fraction of the time.
const raceEnabled = true
