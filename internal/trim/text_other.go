//go:build !linux

package trim

// Text does nothing outside Linux.
func Text() {}
