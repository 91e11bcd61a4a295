package agent

// SetCrashHook lets a test stop the process at a named point of an update.
func (r *Runner) SetCrashHook(f func(point string)) { r.crash, r.lay.crash = f, f }

// SemaphoreForTest is the runner's fleet semaphore.
func (r *Runner) SemaphoreForTest() any { return r.sem }
