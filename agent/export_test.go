package agent

import "time"

// SetCrashHook lets a test stop the process at a named point of an update.
func (r *Runner) SetCrashHook(f func(point string)) { r.crash, r.lay.crash = f, f }

// Updating is the agent's count of updates in progress.
func (a *Agent) Updating() int32 { return a.updating.Load() }

// SetClock replaces the runner's clock (back-offs, signing times).
func (r *Runner) SetClock(now func() time.Time) { r.now = now }

// SemaphoreForTest is the runner's fleet semaphore.
func (r *Runner) SemaphoreForTest() any { return r.sem }
