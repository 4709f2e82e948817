"""The benchmarks' reports: printed, and written as markdown where asked."""

__all__ = ['print_report']


def print_report(lines, out=None):
    """Print the report's `lines` and, with a path `out`, write them there too; returns the text."""
    text = '\n'.join(lines)
    print(text, flush=True)
    if out:
        with open(out, 'w') as f:
            f.write(text + '\n')
    return text
