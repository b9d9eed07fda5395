from tfmux.cli import main

main()
