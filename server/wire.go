package server

// wire adapts a use case's (result, error) to the wire in one expression,
// wire(conv)(h.s.core.UseCase(...)): the error as it is (mapped once, in
// unaryRequest), or the converted result.
func wire[T, W any](conv func(T) *W) func(T, error) (*W, error) {
	return func(v T, err error) (*W, error) {
		if err != nil {
			return nil, err
		}
		return conv(v), nil
	}
}
