from mp4sr.cli import main

main()
