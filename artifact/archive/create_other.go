//go:build !linux

package archive

import "os"

// createAt: the caller creates the file through the root.
func (x *extractor) createAt(dir, base string) (*os.File, bool, error) { return nil, false, nil }

// dirBound: the directories kept open (to link files into) are bounded
// by maxDirFiles alone.
func dirBound() int { return maxDirFiles }
